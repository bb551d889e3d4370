"""GLUE / SuperGLUE files -> tokenized pair arrays for BERT-family encoders.

TensorFlow-free: reads the official distribution formats (SuperGLUE JSONL,
GLUE TSV) below a data directory laid out like `../shared/data`
(`super_glue/<task>/{train,val}.jsonl`, `glue/<task>/{train,dev}.tsv`) with
the readers the seqio tasks use (`ptuning_jax.data.readers`: TFDS features,
errors naming file and line), turns every example into one text pair (or,
for COPA, one pair per choice) and tokenizes it with the checkpoint's own
tokenizer (`tokenization.HFTokenizer`, `[CLS] a [SEP] b [SEP]`,
longest-first truncation).

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

Metrics (`compute_metrics`) come from `ptuning_jax.data.metrics` and are
percentages (x100), like every metric of the package.

Dimension letters: N examples, C choices (multiple choice), T max length.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import zlib
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from ptuning_jax.data import metrics as metrics_lib
from ptuning_jax.data import pipeline
from ptuning_jax.data import readers

KINDS = ("classification", "regression", "multiple_choice")
SPLITS = ("train", "eval")
# BoolQ: an example is in the "eval" split when crc32(passage) % 10 < this.
BOOLQ_EVAL_BUCKETS = 3

Pair = tuple[str, Optional[str]]


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
    reader: path -> examples with the TFDS builder's features
      (`ptuning_jax.data.readers`): text fields and `label`, a class index
      (-1: unlabelled) or, for regression, a float.
    pairs: (example, where) -> one (a, b) pair (b may be None), or one pair
      per choice for multiple choice.
    label_names: class names in index order (choices for multiple choice).
    metrics: metric names `compute_metrics` reports, the first is primary.
    split_fn: (split, examples) -> examples of that split (BoolQ); None keeps
      all.
  """
  name: str
  kind: str
  files: Mapping[str, str]
  reader: Callable[[str], Iterator[dict]]
  pairs: Callable[[Mapping[str, Any], str], list[Pair]]
  label_names: tuple[str, ...]
  metrics: tuple[str, ...]
  split_fn: Optional[Callable[[str, list[dict]], list[dict]]] = None

  @property
  def num_classes(self) -> int:
    """Outputs of the head: classes, or 1 (regression; a choice's score)."""
    return len(self.label_names) if self.kind == "classification" else 1

  def to_example(self, row: Mapping[str, Any], where: str) -> tuple[list[Pair], Any]:
    """(pairs, label) of one example; `where` names it in errors."""
    pairs = self.pairs(row, where)
    label = _field(row, "label", where)
    if self.kind == "regression":
      return pairs, float(label)
    if label not in range(len(self.label_names)):
      raise ValueError(f"{where}: label {label!r} is not a class index of "
                       f"{list(self.label_names)} (-1: unlabelled).")
    return pairs, int(label)


def _pair(key_a: str, key_b: Optional[str]):
  def pairs(row, where):
    return [(_field(row, key_a, where),
             None if key_b is None else _field(row, key_b, where))]
  return pairs


def _wic(row, where):
  word = _field(row, "word", where)
  return [(f"{word}: {_field(row, 'sentence1', where)}",
           f"{word}: {_field(row, 'sentence2', where)}")]


def _copa(row, where):
  question = _field(row, "question", where)
  joiner = {"cause": "because", "effect": "so"}.get(question)
  if joiner is None:
    raise ValueError(f"{where}: COPA question {question!r} is not cause/effect.")
  first = f"{_field(row, 'premise', where)} {joiner}"
  return [(first, _field(row, "choice1", where)), (first, _field(row, "choice2", where))]


def _boolq_split(split: str, rows: list[dict]) -> list[dict]:
  """Deterministic passage-level split of BoolQ's validation file."""
  def in_eval(row):
    return zlib.crc32(row["passage"].encode("utf-8")) % 10 < BOOLQ_EVAL_BUCKETS
  return [r for r in rows if in_eval(r) == (split == "eval")]


def _super_glue(name: str, pairs, label_names, metrics, split_fn=None,
                kind: str = "classification", files=("train", "val")) -> TaskSpec:
  path = "super_glue/{}/{}.jsonl"
  return TaskSpec(name, kind, {"train": path.format(name, files[0]),
                               "eval": path.format(name, files[1])},
                  readers.super_glue_jsonl(name), pairs, label_names, metrics,
                  split_fn)


def _glue(name: str, columns: Mapping[str, Any], label_column: Any, label_names,
          metrics, header: bool = True, kind: str = "classification") -> TaskSpec:
  path = "glue/{}/{}.tsv"
  keys = list(columns)
  reader = readers.glue_tsv(columns, label_column, None, header=header,
                            label_type=float if kind == "regression" else int)
  return TaskSpec(name, kind, {"train": path.format(name, "train"),
                               "eval": path.format(name, "dev")},
                  reader, _pair(keys[0], keys[1] if len(keys) > 1 else None),
                  label_names, metrics)


_NLI2 = ("entailment", "not_entailment")
_NLI3 = ("entailment", "contradiction", "neutral")

TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    _super_glue("rte", _pair("premise", "hypothesis"), _NLI2, ("accuracy",)),
    _super_glue("cb", _pair("premise", "hypothesis"), _NLI3, ("accuracy", "macro_f1")),
    _super_glue("wic", _wic, ("False", "True"), ("accuracy",)),
    _super_glue("copa", _copa, ("choice1", "choice2"), ("accuracy",),
                kind="multiple_choice"),
    _super_glue("boolq", _pair("question", "passage"), ("False", "True"), ("accuracy",),
                _boolq_split, files=("val", "val")),
    _glue("sst2", {"sentence": "sentence"}, "label", ("negative", "positive"),
          ("accuracy",)),
    _glue("mrpc", {"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality",
          ("not_equivalent", "equivalent"), ("f1", "accuracy")),
    # CoLA's files have no header: source, label, original mark, sentence.
    _glue("cola", {"sentence": 3}, 1, ("unacceptable", "acceptable"), ("matthews",),
          header=False),
    _glue("stsb", {"sentence1": "sentence1", "sentence2": "sentence2"}, "score",
          ("score",), ("pearson", "spearman"), kind="regression"),
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
  rows = list(spec.reader(str(path)))
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

# Metric name -> fn(labels [N], predictions [N], C) -> percentage, all from
# `ptuning_jax.data.metrics` (scikit-learn / scipy).
_METRICS = {
    "accuracy": lambda y, p, c: metrics_lib.accuracy(y, p)["accuracy"],
    "f1": lambda y, p, c: metrics_lib.f1_binary(y, p)["f1"],
    "macro_f1": lambda y, p, c: metrics_lib.mean_multiclass_f1(c)(y, p)[
        f"mean_{c}class_f1"],
    "matthews": lambda y, p, c: metrics_lib.matthews_corrcoef(y, p)[
        "matthews_corrcoef"],
    "pearson": lambda y, p, c: metrics_lib.pearson_corrcoef(y, p)["pearson_corrcoef"],
    "spearman": lambda y, p, c: metrics_lib.spearman_corrcoef(y, p)[
        "spearman_corrcoef"],
}


def compute_metrics(spec: TaskSpec, outputs: np.ndarray,
                    labels: np.ndarray) -> dict[str, float]:
  """The task's metrics from model outputs, in percent (`data.metrics`).

  Args:
    spec: the task.
    outputs: [N, C] logits (classification, multiple choice) or [N]
      predicted scores (regression).
    labels: [N] gold labels.
  Returns:
    {metric: value} for every name in `spec.metrics`, plus "score", their
    mean (the GLUE / SuperGLUE convention for tasks with two metrics); all
    percentages (x100). Macro F1 averages over all C classes, also those
    absent from `labels`; a correlation of constant outputs is 0.
  """
  outputs, labels = np.asarray(outputs), np.asarray(labels)
  if outputs.shape[0] != labels.shape[0]:
    raise ValueError(f"{spec.name}: {outputs.shape[0]} outputs for "
                     f"{labels.shape[0]} labels.")
  if spec.kind == "regression":
    predictions, num_classes = outputs, 1
  else:
    if outputs.ndim != 2:
      raise ValueError(f"{spec.name}: expected logits [N, C], got {outputs.shape}.")
    predictions, num_classes = np.argmax(outputs, axis=-1), outputs.shape[-1]
  out = {name: float(_METRICS[name](labels, predictions, num_classes))
         for name in spec.metrics}
  out["score"] = float(np.mean(list(out.values())))
  return out
