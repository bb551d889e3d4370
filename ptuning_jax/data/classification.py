"""The run data object of a GLUE / SuperGLUE classification task (TF-free).

`ClassificationData` is to encoder backbones (BERT family) what
`seqio_data.SeqioData` is to encoder-decoders: what `run.train`, `evaluate`
and `infer` consume. It reads the official files through `data.glue`
(tokenised with the checkpoint's own `tokenizer.json`), batches them with the
resumable `pipeline.BatchIterator` (so a resumed run is bit-identical) and
scores a classifier's outputs with the task's metrics (`glue.compute_metrics`).

The data-object protocol (see `text_data`): `task_kind`, `num_classes`,
`vocab` (the tokenizer: prompt initialisers encode text with it),
`feature_lengths`, `train_iterator()`, `eval_data(split, max_examples)`,
`read_inputs(path)` / `encode_inputs(rows, where)` / `describe_output(o)`
(for `infer`).

Dimension letters: N examples, C classes or choices, T max length.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from ptuning_jax.data import glue
from ptuning_jax.data import pipeline
from ptuning_jax.data import tokenization
from ptuning_jax.training import evaluation

# The run's evaluation split names and the task's split they read.
EVAL_SPLITS = ("validation", "eval")


class ClassificationData:
  """One task's tokenised splits as a run's data object.

  Args:
    task: a key of `glue.TASKS` ("rte", "cb", "wic", "copa", "boolq", "sst2",
      "mrpc", "cola", "stsb").
    data_dir: directory holding `super_glue/` and `glue/` (e.g. ../shared/data).
    tokenizer_dir: directory of the checkpoint's `tokenizer.json`.
    max_length: T, tokens per pair (per choice), special tokens included;
      longer pairs are truncated longest-first.
    batch_size: global training batch size.
    seed: shuffling seed.
    max_train_examples: read only a fixed random subset of the training set.
  """

  def __init__(self, task: str, data_dir: str, tokenizer_dir: str,
               max_length: int = 128, batch_size: int = 32, seed: int = 42,
               max_train_examples: Optional[int] = None):
    self.spec = glue.get_task(task)
    if not os.path.isdir(data_dir):
      raise FileNotFoundError(f"ClassificationData.data_dir={data_dir!r} is not a "
                              "directory (it should hold super_glue/ and glue/).")
    self.task, self.data_dir, self.max_length = task, data_dir, max_length
    self.batch_size, self.seed = batch_size, seed
    self.vocab = tokenization.HFTokenizer(tokenizer_dir)
    loaded = glue.load_task(task, data_dir, self.vocab, max_length,
                            max_train_examples=max_train_examples)
    self.train, self.eval, self.eval_total = loaded.train, loaded.eval, loaded.eval_total
    self._eval_cache: dict = {}

  def reseeded(self, seed: int) -> "ClassificationData":
    """The same tokenised data with another shuffling seed (no re-reading)."""
    other = copy.copy(self)
    other.seed = seed
    return other

  @property
  def task_kind(self) -> str:
    return self.spec.kind

  @property
  def num_classes(self) -> int:
    return len(self.spec.label_names)

  @property
  def feature_lengths(self) -> dict:
    return {"inputs": self.max_length}

  def train_iterator(self) -> pipeline.BatchIterator:
    return pipeline.BatchIterator(self.train, self.batch_size, self.seed,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())

  def eval_data(self, split: str = "validation",
                max_examples: Optional[int] = None) -> evaluation.EvalData:
    """The evaluation split, or a fixed random subset of `max_examples` of it
    (the same subset for every method and seed: `glue.subset_indices`)."""
    if split not in EVAL_SPLITS:
      raise ValueError(f"ClassificationData({self.task!r}): split {split!r}; the "
                       f"evaluation split is one of {EVAL_SPLITS}.")
    if max_examples not in self._eval_cache:
      keep = glue.subset_indices(len(self.eval), max_examples, f"{self.task}/eval")
      dataset = self.eval.subset(keep) if len(keep) < len(self.eval) else self.eval
      labels = dataset.arrays["label"]
      self._eval_cache[max_examples] = evaluation.EvalData(
          dataset, compute_output_metrics=lambda outputs: glue.compute_metrics(
              self.spec, outputs, labels))
    return self._eval_cache[max_examples]

  # ---- infer ----

  def read_inputs(self, path: str) -> list[dict]:
    """Examples of a file in the task's official format (that of its dev
    file, e.g. SuperGLUE JSONL, GLUE TSV); labels, if present, are ignored."""
    return [dict(example) for example in self.spec.reader(path)]

  def encode_inputs(self, rows: Sequence[dict], where: str = "inputs"
                    ) -> pipeline.ArrayDataset:
    """Examples -> arrays, as the task's examples (labels set to 0)."""
    pairs = [self.spec.pairs(row, f"{where} (example {i + 1})")
             for i, row in enumerate(rows)]
    labels = [0.0 if self.spec.kind == "regression" else 0] * len(pairs)
    return pipeline.ArrayDataset(glue.to_arrays(self.spec, self.vocab, pairs, labels,
                                                self.max_length))

  def describe_output(self, output: np.ndarray) -> Any:
    """A classifier output as the task's label name (or the predicted score)."""
    if self.spec.kind == "regression":
      return float(output)
    return self.spec.label_names[int(np.argmax(output))]

