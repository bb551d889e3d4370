"""The data object a run consumes, for in-memory text examples (no TensorFlow).

Dimension letters: N examples, T input length, S target length, C labels.

A run's data object provides:
  * `vocab`: `encode(str) -> ids`, `decode(ids) -> str`;
  * `feature_lengths`: `{"inputs": T, "targets": S}`;
  * `train_iterator()`: a resumable batch iterator (`get_state`/`set_state`);
  * `eval_data(split, max_examples) -> evaluation.EvalData`;
  * `encode_inputs(texts) -> pipeline.ArrayDataset` (for `infer`).

`TextTaskData` implements it for lists of `{"inputs", "targets"}` strings
(the embedded demo, notebooks, tests); `ptuning_jax.data.seqio.seqio_data.SeqioData`
implements it for seqio tasks and mixtures.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from ptuning_jax.training import evaluation
from ptuning_jax.data import metrics
from ptuning_jax.data import pipeline


def _accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """`metrics.accuracy` (percent) of the texts, surrounding spaces ignored."""
  return metrics.accuracy([t.strip() for t in targets],
                          [p.strip() for p in predictions])


def candidate_arrays(vocab, labels: Sequence[str], length: int) -> np.ndarray:
  """Label strings -> candidate target ids [C, S] (EOS appended)."""
  return np.stack([pipeline.pad_sequence(vocab.encode(l), length,
                                               append_eos=True, name=f"label {l!r}")
                   for l in labels])


class TextTaskData:
  """In-memory examples: `splits` maps split name -> list of dicts with
  `inputs` and `targets` strings. `label_strings` enables rank classification."""

  def __init__(self, splits: Mapping[str, Sequence[Mapping[str, str]]], vocab: Any,
               feature_lengths: Mapping[str, int], batch_size: int, seed: int = 0,
               train_split: str = "train",
               label_strings: Optional[Sequence[str]] = None):
    self.vocab, self.feature_lengths = vocab, dict(feature_lengths)
    self.batch_size, self.seed, self.train_split = batch_size, seed, train_split
    self.label_strings = list(label_strings) if label_strings else None
    self._splits = {k: list(v) for k, v in splits.items()}
    self._encoded: dict[str, pipeline.ArrayDataset] = {}

  def dataset(self, split: str) -> pipeline.ArrayDataset:
    if split not in self._splits:
      raise KeyError(f"no split {split!r}; available: {sorted(self._splits)}")
    if split not in self._encoded:
      self._encoded[split] = pipeline.encode_examples(
          self._splits[split], self.vocab, self.feature_lengths)
    return self._encoded[split]

  def train_iterator(self) -> pipeline.BatchIterator:
    return pipeline.BatchIterator(
        self.dataset(self.train_split), self.batch_size, self.seed,
        process_index=jax.process_index(), process_count=jax.process_count())

  def eval_data(self, split: str, max_examples: Optional[int] = None
                ) -> evaluation.EvalData:
    ds = self.dataset(split)
    if max_examples is not None and max_examples < len(ds):
      ds = ds.subset(np.arange(max_examples))
    targets = [m["targets"] for m in ds.metadata]

    def compute_metrics(pred_ids):
      preds = [self.vocab.decode(p.tolist()) for p in pred_ids]
      return _accuracy(targets, preds)

    if not self.label_strings:
      return evaluation.EvalData(ds, compute_metrics)

    def rank_metrics(scores):
      preds = [self.label_strings[i] for i in np.argmax(scores, axis=-1)]
      return _accuracy(targets, preds)

    candidates = candidate_arrays(self.vocab, self.label_strings,
                                  self.feature_lengths["targets"])
    return evaluation.EvalData(ds, compute_metrics, candidates, rank_metrics)

  def encode_inputs(self, texts: Sequence[str]) -> pipeline.ArrayDataset:
    return pipeline.encode_examples(
        [{"inputs": t, "targets": ""} for t in texts], self.vocab,
        self.feature_lengths)
