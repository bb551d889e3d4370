"""A seqio vocabulary over a Hugging Face `tokenizer.json` (BERT family).

`HFVocabulary` wraps `tokenization.HFTokenizer` so seqio tasks can tokenize
with a BERT / RoBERTa / XLM-R checkpoint's own tokenizer:

  * `encode` / `encode_tf` give the pieces only, without [CLS] / [SEP]
    (seqio's contract: no EOS is added by the vocabulary).
  * `eos_id` is the separator ([SEP] / </s>), so `add_eos=True` output
    features end each segment as BERT does; `bos_id` is [CLS] / <s>. Adding
    [CLS] and joining sentence pairs is the feature converter's job (or use
    `HFTokenizer.encode_pair` in a preprocessor).
  * `pad_id` is the tokenizer's padding id. seqio's own trimming and padding
    always pad with 0, which for RoBERTa (pad 1) is <s>: build attention
    masks from sequence lengths or segment ids, never from `ids != pad_id`.
  * `decode` stops after the first separator (seqio) and drops special
    tokens.

The TensorFlow ops call the Rust tokenizer through `tf.numpy_function`
(fine for tf.data on one host; the graph is not serializable).

Dimension letters: B batch, T length.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import numpy as np
import seqio
import tensorflow as tf

from ptuning_jax.data import tokenization


def _text(s: bytes | str) -> str:
  return s.decode("utf-8") if isinstance(s, bytes) else s


class HFVocabulary(seqio.Vocabulary):
  """seqio vocabulary of a Hugging Face checkpoint's `tokenizer.json`.

  Args:
    path: a `tokenizer.json` file or the checkpoint directory holding it.
  """

  def __init__(self, path: str | os.PathLike):
    self.tokenizer = tokenization.HFTokenizer(path)
    self.path = str(self.tokenizer.path)
    super().__init__(extra_ids=0)

  @property
  def bos_id(self) -> Optional[int]:
    return self.tokenizer.cls_id

  @property
  def eos_id(self) -> Optional[int]:
    return self.tokenizer.sep_id

  @property
  def pad_id(self) -> int:
    return self.tokenizer.pad_id

  @property
  def unk_id(self) -> Optional[int]:
    try:
      return self.tokenizer.unk_id
    except ValueError:
      return None

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def _encode(self, s: str) -> list[int]:
    return self.tokenizer.encode(s)

  def _decode(self, ids) -> str:
    return self.tokenizer.decode(ids)

  # ---- TensorFlow ----

  def _encode_one(self, s) -> np.ndarray:
    return np.asarray(self.tokenizer.encode(_text(np.asarray(s).item())), np.int32)

  def _encode_many(self, strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = self.tokenizer.encode_batch([_text(s) for s in strings])
    values = np.asarray([i for row in ids for i in row], np.int32)
    return values, np.asarray([len(row) for row in ids], np.int64)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
    """s: [] string -> [T] int32; s: [B] strings -> ragged [B, None] int32."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank == 0:
      ids = tf.numpy_function(self._encode_one, [s], tf.int32, stateful=False)
      ids.set_shape([None])
      return ids
    if s.shape.rank == 1:
      values, lengths = tf.numpy_function(self._encode_many, [s],
                                          [tf.int32, tf.int64], stateful=False)
      values.set_shape([None])
      lengths.set_shape([None])
      return tf.RaggedTensor.from_row_lengths(values, lengths)
    raise ValueError(f"HFVocabulary.encode_tf takes a scalar or a vector of "
                     f"strings; got shape {s.shape}.")

  def _decode_one(self, ids: np.ndarray) -> bytes:
    return self.tokenizer.decode(ids).encode("utf-8")

  def _decode_many(self, ids: np.ndarray) -> np.ndarray:
    return np.asarray([self._decode_one(row) for row in ids], dtype=object)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """ids: [T] -> [] string; [B, T] -> [B] strings."""
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank == 1:
      text = tf.numpy_function(self._decode_one, [ids], tf.string, stateful=False)
      text.set_shape([])
      return text
    if ids.shape.rank == 2:
      text = tf.numpy_function(self._decode_many, [ids], tf.string, stateful=False)
      text.set_shape([ids.shape[0]])
      return text
    raise ValueError(f"HFVocabulary.decode_tf takes [T] or [B, T] ids; got shape "
                     f"{ids.shape}.")

  def __eq__(self, other) -> bool:
    return isinstance(other, HFVocabulary) and other.path == self.path

  def __hash__(self) -> int:
    return hash((HFVocabulary, self.path))

  def __repr__(self) -> str:
    return f"HFVocabulary({self.path!r})"


@functools.lru_cache(maxsize=None)
def hf_vocabulary(path: str) -> HFVocabulary:
  """Cached `HFVocabulary(path)` (one tokenizer per file per process)."""
  return HFVocabulary(path)


def all_minilm_l6_v2_vocabulary() -> HFVocabulary:
  """The WordPiece vocabulary of the packaged all-MiniLM-L6-v2 checkpoint."""
  from ptuning_jax.backbones.hf import bert as hf_bert  # pylint: disable=g-import-not-at-top
  return hf_vocabulary(str(hf_bert.all_minilm_l6_v2_dir()))
