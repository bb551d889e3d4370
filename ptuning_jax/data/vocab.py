"""TF-free tokenizers that give exactly the ids of seqio's vocabularies.

The core package must run on a machine without TensorFlow, so training and
decoding cannot use `seqio.SentencePieceVocabulary` / `seqio.ByteVocabulary`
(both import TF). These two classes reproduce their Python (`encode` /
`decode`) behaviour id for id:

  * `SentencePieceVocab`: the T5 SentencePiece model with `extra_ids` sentinel
    pieces `▁<extra_id_k>` appended to the model proto in reverse order, so
    `<extra_id_k>` is id `vocab_size - 1 - k` and the sentinels tokenize as
    single pieces, exactly as seqio builds them.
  * `ByteVocab`: ByT5 / `seqio.ByteVocabulary` ids: 0 pad, 1 EOS, 2 UNK, byte
    `b` -> `b + 3`, then `extra_ids` sentinels.

Neither `encode` appends EOS (the feature conversion in `input_pipeline` does);
`decode` stops at the first EOS, drops pad / special ids, and maps ids at or
above `vocab_size` to UNK, as seqio's `Vocabulary.decode` does.
"""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


def _clean_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
  """seqio's `Vocabulary.decode` prelude: OOV -> UNK, cut after first EOS."""
  clean = [int(i) for i in np.asarray(ids).reshape(-1)]
  clean = [UNK_ID if i >= vocab_size else i for i in clean]
  if EOS_ID in clean:
    clean = clean[:clean.index(EOS_ID) + 1]
  return clean


class SentencePieceVocab:
  """T5 SentencePiece tokenizer with seqio's ids, without TensorFlow.

  Attributes:
    path: the `.model` file.
    extra_ids: number of sentinel ids appended to the pieces.
  """

  def __init__(self, path: str | os.PathLike, extra_ids: int = 100):
    # Imported here: only this class needs the protobuf module.
    # pylint: disable=g-import-not-at-top
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    # pylint: enable=g-import-not-at-top

    self.path = os.fspath(path)
    if extra_ids < 0:
      raise ValueError(f"extra_ids must be >= 0, got {extra_ids}.")
    self.extra_ids = int(extra_ids)
    try:
      with open(self.path, "rb") as f:
        proto = sentencepiece_model_pb2.ModelProto.FromString(f.read())
    except OSError as e:
      raise FileNotFoundError(
          f"SentencePieceVocab: cannot read model file {self.path!r}: {e}"
      ) from e
    # Same construction as seqio: sentinels appended in reverse order so the
    # first sentinel gets the highest id (T5 span corruption convention).
    piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    for k in reversed(range(self.extra_ids)):
      proto.pieces.add(piece=f"▁<extra_id_{k}>", score=0.0, type=piece_type)
    self._sp = spm.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(proto.SerializeToString())
    if self._sp.pad_id() != PAD_ID or self._sp.eos_id() != EOS_ID:
      raise ValueError(
          f"SentencePieceVocab: {self.path!r} has pad_id={self._sp.pad_id()}, "
          f"eos_id={self._sp.eos_id()}; T5 conventions need pad 0 and EOS 1.")

  @property
  def vocab_size(self) -> int:
    """Pieces plus sentinels (32100 for T5), as `seqio` reports it."""
    return self._sp.GetPieceSize()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  def sentinel_id(self, k: int) -> int:
    """Id of `<extra_id_k>`: `vocab_size - 1 - k`."""
    if not 0 <= k < self.extra_ids:
      raise ValueError(f"sentinel k={k} outside [0, {self.extra_ids}).")
    return self.vocab_size - 1 - k

  def encode(self, s: str) -> list[int]:
    """Token ids of `s`, without EOS."""
    if not isinstance(s, str):
      raise TypeError(f"SentencePieceVocab.encode expects str, got {type(s)}.")
    return list(self._sp.EncodeAsIds(s))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` up to the first EOS; pad and control ids vanish."""
    return self._sp.DecodeIds(_clean_ids(ids, self.vocab_size))

  def __repr__(self) -> str:
    return f"SentencePieceVocab({self.path!r}, extra_ids={self.extra_ids})"


class ByteVocab:
  """UTF-8 byte tokenizer with `seqio.ByteVocabulary`'s ids."""

  NUM_SPECIAL = 3
  NUM_BYTES = 256

  def __init__(self, extra_ids: int = 0):
    if extra_ids < 0:
      raise ValueError(f"extra_ids must be >= 0, got {extra_ids}.")
    self.extra_ids = int(extra_ids)

  @property
  def vocab_size(self) -> int:
    """259 (+ `extra_ids`)."""
    return self.NUM_SPECIAL + self.NUM_BYTES + self.extra_ids

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID

  def encode(self, s: str | bytes) -> list[int]:
    """Byte ids of `s` (UTF-8), without EOS."""
    if isinstance(s, bytes):
      s = s.decode("utf-8")
    if not isinstance(s, str):
      raise TypeError(f"ByteVocab.encode expects str, got {type(s)}.")
    return [b + self.NUM_SPECIAL for b in s.encode("utf-8")]

  def decode(self, ids: Iterable[int]) -> str:
    """Text up to the first EOS; special and sentinel ids are dropped."""
    base_size = self.NUM_SPECIAL + self.NUM_BYTES
    # seqio maps ids >= the base size (sentinels included) to UNK first.
    ids = _clean_ids(ids, base_size)
    data = bytes(i - self.NUM_SPECIAL for i in ids
                 if self.NUM_SPECIAL <= i < base_size)
    return data.decode("utf-8", errors="ignore")

  def __repr__(self) -> str:
    return f"ByteVocab(extra_ids={self.extra_ids})"
