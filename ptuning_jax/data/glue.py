"""GLUE / SuperGLUE files -> tokenized pair arrays for BERT-family encoders.

TensorFlow-free: reads the official distribution formats (SuperGLUE JSONL,
GLUE TSV) below a data directory laid out like `../shared/data`
(`super_glue/<task>/{train,val}.jsonl`, `glue/<task>/{train,dev}.tsv`), turns
every example into one text pair (or, for COPA, one pair per choice) and
tokenizes it with the checkpoint's own tokenizer (`tokenization.HFTokenizer`,
`[CLS] a [SEP] b [SEP]`, longest-first truncation).

Tasks (`TASKS`), their inputs and metrics:

  task   kind             inputs (segment a | segment b)          metrics
  rte    classification   premise | hypothesis                    accuracy
  cb     classification   premise | hypothesis                    accuracy, macro F1
  wic    classification   "word: sentence1" | "word: sentence2"   accuracy
  copa   multiple choice  "premise because|so" | choice_k         accuracy
  boolq  classification   question | passage                      accuracy
  sst2   classification   sentence                                accuracy
  mrpc   classification   sentence1 | sentence2                   F1, accuracy
  cola   classification   sentence                                Matthews corr.
  stsb   regression       sentence1 | sentence2                   Pearson, Spearman

The pair formats of the SuperGLUE tasks are P-Tuning v2's
(`tasks/superglue/dataset.py`: WiC template 1 "for BERT", COPA's "because" /
"so" joiner with one forward pass per choice, scored as multiple choice);
the GLUE ones are the standard `run_glue` keys. Label indices follow the
TFDS / Hugging Face datasets label order (e.g. RTE entailment = 0).

Splits: train on the official train file, evaluate on the official
validation / dev file. BoolQ has only its validation file here
(`shared/data/SOURCES.md`): it is split deterministically by passage, so
no passage is in both parts: an example goes to "eval" when
crc32(passage) % 10 < 3 (about 30%, 955 of 3270), to "train" otherwise.

Arrays of a `TaskData` split (an `pipeline.ArrayDataset`):
  input_ids, attention_mask, token_type_ids: [N, T] int32 ([N, C, T] for
      multiple choice: one row per choice), padded with the pad id / 0;
  label: [N] int32 (class index or correct choice) or float32 (regression).

Dimension letters: N examples, C choices (multiple choice), T max length.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import zlib
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ptuning_jax.data import pipeline

KINDS = ("classification", "regression", "multiple_choice")
SPLITS = ("train", "eval")
# BoolQ: an example is in the "eval" split when crc32(passage) % 10 < this.
BOOLQ_EVAL_BUCKETS = 3

Pair = tuple[str, Optional[str]]


# ------------------------------------------------------------------- readers


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """Non-empty lines of a JSONL file as dicts (errors name file and line)."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not valid JSON ({e.msg}).") from None
  return rows


def read_tsv(path: str | os.PathLike, header: bool = True,
             columns: Optional[Sequence[str]] = None) -> list[dict]:
  """GLUE TSV rows as dicts keyed by the header (or `columns` if no header).

  Quotes are literal (GLUE files are written without quoting); a UTF-8 BOM
  (MRPC) is dropped.
  """
  with open(path, encoding="utf-8-sig", newline="") as f:
    lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  if header:
    if not lines:
      raise ValueError(f"{path}: empty TSV file, expected a header line.")
    columns, lines = lines[0], lines[1:]
  rows = []
  for number, fields in enumerate(lines, 2 if header else 1):
    if not fields:
      continue
    if len(fields) != len(columns):
      raise ValueError(f"{path}:{number}: {len(fields)} fields, expected "
                       f"{len(columns)} ({list(columns)}).")
    rows.append(dict(zip(columns, fields)))
  return rows


def _field(row: Mapping[str, Any], key: str, where: str) -> Any:
  if key not in row:
    raise ValueError(f"{where}: no field {key!r} (fields: {sorted(row)}).")
  return row[key]


# ------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """How one task's files become examples.

  Attributes:
    name: short name ("rte", ..., see `TASKS`).
    kind: one of KINDS.
    files: split ("train" / "eval") -> path relative to the data directory.
    reader: path -> raw rows.
    to_example: (row, where) -> (pairs, label): one (a, b) pair (b may be
      None), or one pair per choice for multiple choice; label an int index
      or a float score.
    label_names: class names in index order (choices for multiple choice).
    metrics: metric names `compute_metrics` reports, the first is primary.
    split_fn: (split, rows) -> rows of that split (BoolQ); None keeps all.
  """
  name: str
  kind: str
  files: Mapping[str, str]
  reader: Callable[[str], list[dict]]
  to_example: Callable[[Mapping[str, Any], str], tuple[list[Pair], Any]]
  label_names: tuple[str, ...]
  metrics: tuple[str, ...]
  split_fn: Optional[Callable[[str, list[dict]], list[dict]]] = None

  @property
  def num_classes(self) -> int:
    """Outputs of the head: classes, or 1 (regression; a choice's score)."""
    return len(self.label_names) if self.kind == "classification" else 1


def _label_index(names: Sequence[Any], value: Any, where: str) -> int:
  if value not in names:
    raise ValueError(f"{where}: label {value!r} is not one of {list(names)}.")
  return list(names).index(value)


def _nli(label_names):
  def convert(row, where):
    pair = (_field(row, "premise", where), _field(row, "hypothesis", where))
    return [pair], _label_index(label_names, _field(row, "label", where), where)
  return convert


def _wic(row, where):
  word = _field(row, "word", where)
  pair = (f"{word}: {_field(row, 'sentence1', where)}",
          f"{word}: {_field(row, 'sentence2', where)}")
  return [pair], _label_index((False, True), _field(row, "label", where), where)


def _copa(row, where):
  question = _field(row, "question", where)
  joiner = {"cause": "because", "effect": "so"}.get(question)
  if joiner is None:
    raise ValueError(f"{where}: COPA question {question!r} is not cause/effect.")
  first = f"{_field(row, 'premise', where)} {joiner}"
  pairs = [(first, _field(row, "choice1", where)), (first, _field(row, "choice2", where))]
  return pairs, _label_index((0, 1), _field(row, "label", where), where)


def _boolq(row, where):
  pair = (_field(row, "question", where), _field(row, "passage", where))
  return [pair], _label_index((False, True), _field(row, "label", where), where)


def _boolq_split(split: str, rows: list[dict]) -> list[dict]:
  """Deterministic passage-level split of BoolQ's validation file."""
  def in_eval(row):
    return zlib.crc32(row["passage"].encode("utf-8")) % 10 < BOOLQ_EVAL_BUCKETS
  return [r for r in rows if in_eval(r) == (split == "eval")]


def _glue(key_a: str, key_b: Optional[str], label_key: str, regression: bool = False):
  def convert(row, where):
    pair = (_field(row, key_a, where), None if key_b is None else _field(row, key_b, where))
    raw = _field(row, label_key, where)
    try:
      label = float(raw) if regression else int(raw)
    except ValueError:
      raise ValueError(f"{where}: label {raw!r} of column {label_key!r} is not "
                       f"{'a number' if regression else 'an integer'}.") from None
    if not regression and label not in (0, 1):
      raise ValueError(f"{where}: label {label} of column {label_key!r} is not 0/1.")
    return [pair], label
  return convert


def _cola_reader(path):
  return read_tsv(path, header=False, columns=("source", "label", "original", "sentence"))


_SG = "super_glue/{}/{}.jsonl"
_GLUE = "glue/{}/{}.tsv"

TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("rte", "classification",
             {"train": _SG.format("rte", "train"), "eval": _SG.format("rte", "val")},
             read_jsonl, _nli(("entailment", "not_entailment")),
             ("entailment", "not_entailment"), ("accuracy",)),
    TaskSpec("cb", "classification",
             {"train": _SG.format("cb", "train"), "eval": _SG.format("cb", "val")},
             read_jsonl, _nli(("entailment", "contradiction", "neutral")),
             ("entailment", "contradiction", "neutral"), ("accuracy", "macro_f1")),
    TaskSpec("wic", "classification",
             {"train": _SG.format("wic", "train"), "eval": _SG.format("wic", "val")},
             read_jsonl, _wic, ("False", "True"), ("accuracy",)),
    TaskSpec("copa", "multiple_choice",
             {"train": _SG.format("copa", "train"), "eval": _SG.format("copa", "val")},
             read_jsonl, _copa, ("choice1", "choice2"), ("accuracy",)),
    TaskSpec("boolq", "classification",
             {"train": _SG.format("boolq", "val"), "eval": _SG.format("boolq", "val")},
             read_jsonl, _boolq, ("False", "True"), ("accuracy",), _boolq_split),
    TaskSpec("sst2", "classification",
             {"train": _GLUE.format("sst2", "train"), "eval": _GLUE.format("sst2", "dev")},
             read_tsv, _glue("sentence", None, "label"), ("negative", "positive"),
             ("accuracy",)),
    TaskSpec("mrpc", "classification",
             {"train": _GLUE.format("mrpc", "train"), "eval": _GLUE.format("mrpc", "dev")},
             read_tsv, _glue("#1 String", "#2 String", "Quality"),
             ("not_equivalent", "equivalent"), ("f1", "accuracy")),
    TaskSpec("cola", "classification",
             {"train": _GLUE.format("cola", "train"), "eval": _GLUE.format("cola", "dev")},
             _cola_reader, _glue("sentence", None, "label"),
             ("unacceptable", "acceptable"), ("matthews",)),
    TaskSpec("stsb", "regression",
             {"train": _GLUE.format("stsb", "train"), "eval": _GLUE.format("stsb", "dev")},
             read_tsv, _glue("sentence1", "sentence2", "score", regression=True),
             ("score",), ("pearson", "spearman")),
)}


def get_task(name: str) -> TaskSpec:
  if name not in TASKS:
    raise ValueError(f"Unknown task {name!r}; expected one of {sorted(TASKS)}.")
  return TASKS[name]


def read_examples(spec: TaskSpec, data_dir: str | os.PathLike,
                  split: str) -> tuple[list[list[Pair]], list[Any]]:
  """(pairs per example, labels) of one split, in file order."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; expected one of {SPLITS}.")
  path = pathlib.Path(data_dir) / spec.files[split]
  if not path.exists():
    raise FileNotFoundError(f"Task {spec.name!r} split {split!r}: {path} does not "
                            f"exist (data_dir={data_dir}).")
  rows = spec.reader(str(path))
  if spec.split_fn is not None:
    rows = spec.split_fn(split, rows)
  pairs, labels = [], []
  for number, row in enumerate(rows):
    example_pairs, label = spec.to_example(row, f"{path} (example {number})")
    pairs.append(example_pairs)
    labels.append(label)
  return pairs, labels


# ---------------------------------------------------------------- tokenizing


def encode_pairs(tokenizer: Any, pairs: Sequence[Pair], max_length: int
                 ) -> dict[str, np.ndarray]:
  """Pairs -> {input_ids, attention_mask, token_type_ids}: [len(pairs), T] int32.

  Each pair is `tokenizer.encode_pair(a, b, max_length)` (longest-first
  truncation, special tokens included), right-padded with the pad id.
  """
  n = len(pairs)
  ids = np.full((n, max_length), tokenizer.pad_id, np.int32)
  mask = np.zeros((n, max_length), np.int32)
  types = np.zeros((n, max_length), np.int32)
  for i, (a, b) in enumerate(pairs):
    row_ids, row_types = tokenizer.encode_pair(a, b, max_length=max_length)
    ids[i, :len(row_ids)] = row_ids
    mask[i, :len(row_ids)] = 1
    types[i, :len(row_types)] = row_types
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def pair_lengths(tokenizer: Any, pairs: Sequence[Sequence[Pair]]) -> np.ndarray:
  """Untruncated token counts (special tokens included), one per pair: [N * C]."""
  return np.asarray([len(tokenizer.encode_pair(a, b)[0])
                     for example in pairs for a, b in example], np.int64)


def to_arrays(spec: TaskSpec, tokenizer: Any, pairs: Sequence[Sequence[Pair]],
              labels: Sequence[Any], max_length: int) -> dict[str, np.ndarray]:
  """Examples -> the split's arrays (module docstring)."""
  if max_length < 3:
    raise ValueError(f"max_length={max_length} leaves no room for a pair.")
  counts = {len(p) for p in pairs}
  if len(counts) > 1:
    raise ValueError(f"Task {spec.name!r}: examples have different numbers of "
                     f"pairs {sorted(counts)}.")
  per_example = counts.pop() if counts else 1
  flat = [pair for example in pairs for pair in example]
  arrays = encode_pairs(tokenizer, flat, max_length)
  if spec.kind == "multiple_choice":
    arrays = {k: v.reshape(len(pairs), per_example, max_length)  # [N, C, T]
              for k, v in arrays.items()}
  dtype = np.float32 if spec.kind == "regression" else np.int32
  arrays["label"] = np.asarray(labels, dtype)
  return arrays


@dataclasses.dataclass
class TaskData:
  """One task's tokenized splits.

  Attributes:
    spec: the task.
    train: training split.
    eval: evaluation split (possibly a prefix of the official one, see
      `load_task`'s `max_eval_examples`).
    max_length: T.
    eval_total: examples of the full evaluation split.
  """
  spec: TaskSpec
  train: pipeline.ArrayDataset
  eval: pipeline.ArrayDataset
  max_length: int
  eval_total: int


def load_task(name: str, data_dir: str | os.PathLike, tokenizer: Any,
              max_length: int = 128, max_eval_examples: Optional[int] = None,
              max_train_examples: Optional[int] = None) -> TaskData:
  """Reads and tokenizes one task.

  Args:
    name: a key of TASKS.
    data_dir: directory holding `super_glue/` and `glue/`.
    tokenizer: an `HFTokenizer` (or anything with `encode_pair` and `pad_id`).
    max_length: T, tokens per (pair, choice), special tokens included.
    max_eval_examples: keep a fixed random subset of this many evaluation
      examples (permutation seeded by the task name, then sorted back into
      file order); None keeps all.
    max_train_examples: likewise for training (to save tokenizing time).
  Returns:
    the task's `TaskData`.
  """
  spec = get_task(name)
  splits = {}
  totals = {}
  for split, limit in (("train", max_train_examples), ("eval", max_eval_examples)):
    pairs, labels = read_examples(spec, data_dir, split)
    totals[split] = len(labels)
    keep = subset_indices(len(labels), limit, f"{name}/{split}")
    pairs, labels = [pairs[i] for i in keep], [labels[i] for i in keep]
    splits[split] = pipeline.ArrayDataset(
        to_arrays(spec, tokenizer, pairs, labels, max_length))
  return TaskData(spec, splits["train"], splits["eval"], max_length, totals["eval"])


def subset_indices(total: int, limit: Optional[int], key: str) -> np.ndarray:
  """Sorted indices of a fixed subset of `limit` of `total` examples (all if
  limit is None or >= total), chosen by a permutation seeded by crc32(key)."""
  if limit is None or limit >= total:
    return np.arange(total)
  if limit < 1:
    raise ValueError(f"{key}: subset size {limit} must be >= 1.")
  rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
  return np.sort(rng.permutation(total)[:limit])


# ------------------------------------------------------------------- metrics


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1_binary(predictions: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
  """F1 of the positive class (0 when it is never predicted nor present)."""
  p, y = np.asarray(predictions) == positive, np.asarray(labels) == positive
  tp = float(np.sum(p & y))
  denom = float(np.sum(p) + np.sum(y))
  return 2.0 * tp / denom if denom else 0.0


def macro_f1(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """Unweighted mean over classes of each class's F1 (SuperGLUE's CB F1)."""
  return float(np.mean([f1_binary(predictions, labels, c) for c in range(num_classes)]))


def matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Matthews correlation of binary predictions (0 when undefined)."""
  p, y = np.asarray(predictions) == 1, np.asarray(labels) == 1
  tp, tn = float(np.sum(p & y)), float(np.sum(~p & ~y))
  fp, fn = float(np.sum(p & ~y)), float(np.sum(~p & y))
  denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return (tp * tn - fp * fn) / denom if denom else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation (0 when either input is constant)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denom = math.sqrt(float(np.sum(x * x) * np.sum(y * y)))
  return float(np.sum(x * y) / denom) if denom else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
  """Average ranks (ties share their mean rank), as scipy.stats.rankdata."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="mergesort")
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.arange(len(x), dtype=np.float64)
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  sums = np.bincount(inverse, weights=ranks)
  return sums[inverse] / counts[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman rank correlation (Pearson of average ranks)."""
  return pearson(_ranks(x), _ranks(y))


def compute_metrics(spec: TaskSpec, outputs: np.ndarray,
                    labels: np.ndarray) -> dict[str, float]:
  """The task's metrics from model outputs.

  Args:
    spec: the task.
    outputs: [N, C] logits (classification, multiple choice) or [N]
      predicted scores (regression).
    labels: [N] gold labels.
  Returns:
    {metric: value} for every name in `spec.metrics`, plus "score", their
    mean (the GLUE / SuperGLUE convention for tasks with two metrics).
  """
  outputs, labels = np.asarray(outputs), np.asarray(labels)
  if outputs.shape[0] != labels.shape[0]:
    raise ValueError(f"{spec.name}: {outputs.shape[0]} outputs for "
                     f"{labels.shape[0]} labels.")
  if spec.kind == "regression":
    values = {"pearson": pearson(outputs, labels), "spearman": spearman(outputs, labels)}
  else:
    if outputs.ndim != 2:
      raise ValueError(f"{spec.name}: expected logits [N, C], got {outputs.shape}.")
    predictions = np.argmax(outputs, axis=-1)
    values = {"accuracy": accuracy(predictions, labels),
              "f1": f1_binary(predictions, labels),
              "macro_f1": macro_f1(predictions, labels, outputs.shape[-1]),
              "matthews": matthews(predictions, labels)}
  out = {name: values[name] for name in spec.metrics}
  out["score"] = float(np.mean(list(out.values())))
  return out
