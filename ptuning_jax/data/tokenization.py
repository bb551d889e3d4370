"""A Hugging Face `tokenizer.json` tokenizer (BERT WordPiece, RoBERTa BPE, XLM-R
Unigram) over the `tokenizers` package, without transformers or TensorFlow.

`encode(text)` gives the pieces only (no [CLS] / [SEP]): it is the `vocab`
protocol the prompt initialisers and seqio use. `encode_pair(a, b)` gives the
model input with the checkpoint's own special-token template ([CLS] a [SEP]
b [SEP] for BERT, <s> a </s></s> b </s> for RoBERTa) and its token-type ids,
the same ids as transformers' fast tokenizer (`tokenizer(a, b)`), including
its "longest_first" truncation when `max_length` is given.

The truncation and padding settings stored inside `tokenizer.json` (e.g.
all-MiniLM-L6-v2 stores max_length 128 and fixed padding) are switched off:
this wrapper never truncates or pads implicitly.

Special tokens are resolved from `special_tokens_map.json`, then
`tokenizer_config.json` beside `tokenizer.json`, then the usual BERT
([CLS], [SEP], [PAD], [MASK], [UNK]) or RoBERTa (<s>, </s>, <pad>, <mask>,
<unk>) spellings.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Iterable, Optional, Sequence

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
SIDE_FILES = ("special_tokens_map.json", "tokenizer_config.json")
SPECIAL_CANDIDATES = {
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "pad": ("[PAD]", "<pad>"),
    "mask": ("[MASK]", "<mask>"),
    "unk": ("[UNK]", "<unk>"),
}
REQUIRED_SPECIALS = ("cls", "sep", "pad")


def _token_content(value) -> Optional[str]:
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def _declared_specials(directory: pathlib.Path) -> dict[str, str]:
  """role -> token text declared by the side files (first file wins)."""
  declared: dict[str, str] = {}
  for name in SIDE_FILES:
    path = directory / name
    if not path.exists():
      continue
    with open(path) as f:
      data = json.load(f)
    for role in SPECIAL_CANDIDATES:
      token = _token_content(data.get(f"{role}_token"))
      if token is not None:
        declared.setdefault(role, token)
  return declared


def longest_first_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
  """Lengths kept by the `tokenizers` "longest_first" pair truncation.

  The shorter input is kept whole if the longer one can absorb the cut;
  otherwise both get half the budget (the longer one the odd token).
  """
  if len_a + len_b <= budget:
    return len_a, len_b
  n1, n2 = sorted((len_a, len_b))
  n2 = n1 if n1 > budget else max(n1, budget - n1)
  if n1 + n2 > budget:
    n1 = budget // 2
    n2 = n1 + budget % 2
  return (n2, n1) if len_a > len_b else (n1, n2)


class HFTokenizer:
  """Tokenizer of a Hugging Face checkpoint.

  Args:
    path: a `tokenizer.json` file or the directory holding it.
  """

  def __init__(self, path: str | os.PathLike):
    import tokenizers  # pylint: disable=g-import-not-at-top
    path = pathlib.Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.exists():
      raise FileNotFoundError(f"HFTokenizer: {file} does not exist (a checkpoint "
                              f"directory must hold {TOKENIZER_FILE}).")
    self.path = file
    self._tok = tokenizers.Tokenizer.from_file(str(file))
    self._tok.no_truncation()
    self._tok.no_padding()
    self._special: dict[str, Optional[int]] = {}
    declared = _declared_specials(file.parent)
    for role, candidates in SPECIAL_CANDIDATES.items():
      names = (declared[role],) if role in declared else candidates
      ids = [self._tok.token_to_id(n) for n in names]
      self._special[role] = next((i for i in ids if i is not None), None)
      if role in REQUIRED_SPECIALS and self._special[role] is None:
        raise ValueError(f"HFTokenizer: {file} has none of the {role} tokens "
                         f"{list(names)} in its vocabulary.")

  # ---- ids ----

  @property
  def vocab_size(self) -> int:
    """Entries of the vocabulary, added tokens included."""
    return self._tok.get_vocab_size(with_added_tokens=True)

  def _role(self, role: str) -> int:
    value = self._special[role]
    if value is None:
      raise ValueError(f"HFTokenizer: {self.path} has no {role} token (tried "
                       f"{list(SPECIAL_CANDIDATES[role])}).")
    return value

  @property
  def pad_id(self) -> int:
    return self._role("pad")

  @property
  def cls_id(self) -> int:
    return self._role("cls")

  @property
  def sep_id(self) -> int:
    return self._role("sep")

  @property
  def mask_id(self) -> int:
    return self._role("mask")

  @property
  def unk_id(self) -> int:
    return self._role("unk")

  def token_to_id(self, token: str) -> int:
    """Id of one vocabulary entry (e.g. a label word); unknown raises."""
    value = self._tok.token_to_id(token)
    if value is None:
      raise ValueError(f"HFTokenizer: {token!r} is not an entry of {self.path}.")
    return value

  def num_special_tokens(self, pair: bool = False) -> int:
    """Special tokens `encode_pair` adds for one (or two) sequence(s)."""
    return self._tok.num_special_tokens_to_add(pair)

  # ---- text ----

  def encode(self, text: str) -> list[int]:
    """Piece ids of `text`, without special tokens."""
    if not isinstance(text, str):
      raise TypeError(f"HFTokenizer.encode needs a str, got {type(text).__name__}.")
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of every text (parallel in the Rust library)."""
    return [list(e.ids) for e in self._tok.encode_batch(list(texts),
                                                        add_special_tokens=False)]

  def encode_pair(self, a: str, b: Optional[str] = None,
                  max_length: Optional[int] = None) -> tuple[list[int], list[int]]:
    """Model input for one sentence (b=None) or a pair.

    Args:
      a: first segment.
      b: second segment; None, or "" as transformers treats it, gives the
        single-sentence input.
      max_length: truncate (longest first) so that the result, special
        tokens included, has at most this many ids; None: no truncation.
    Returns:
      (input ids, token-type ids), equal to transformers'
      `tokenizer(a, b, truncation=max_length is not None, max_length=...)`.
    """
    if not b:  # transformers' `if text_pair` test: "" means no second segment
      b = None
    enc_a = self._tok.encode(a, add_special_tokens=False)
    enc_b = None if b is None else self._tok.encode(b, add_special_tokens=False)
    if max_length is not None:
      budget = max_length - self.num_special_tokens(b is not None)
      if budget < 0:
        raise ValueError(f"max_length={max_length} leaves no room for the "
                         f"{self.num_special_tokens(b is not None)} special tokens.")
      if enc_b is None:
        enc_a.truncate(budget)
      else:
        keep_a, keep_b = longest_first_lengths(len(enc_a.ids), len(enc_b.ids), budget)
        enc_a.truncate(keep_a)
        enc_b.truncate(keep_b)
    out = self._tok.post_process(enc_a, enc_b, add_special_tokens=True)
    return list(out.ids), list(out.type_ids)

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """Text of `ids` (special tokens, padding included, dropped by default)."""
    ids = [int(i) for i in np.asarray(list(ids)).reshape(-1)]
    return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
