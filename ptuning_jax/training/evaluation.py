"""Periodic evaluation: loss, decoding metrics or rank classification.

Dimension letters: N examples, B eval batch, T input length, S target length,
C candidate targets.

The data object of a run (`run.data`) provides `eval_data(split,
max_examples)` returning an `EvalData`; this module only runs the jitted
steps over fixed-shape padded batches (so each step compiles once) and hands
the predictions back to the data object's metric functions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from ptuning_jax.data import pipeline

EVAL_MODES = ("loss", "decode", "rank")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Attributes:
    split: the split to evaluate.
    mode: "loss" (token cross-entropy only), "decode" (greedy decoding and the
      task's metrics) or "rank" (rank classification over the task's label
      strings, then the task's metrics).
    batch_size: eval batch size (a multiple of the mesh's data axis).
    max_examples: evaluate only the first N examples.
    max_decode_length: decode length; default the targets feature length.
    best_metric: metric that picks the best checkpoint ("eval/" omitted).
    best_mode: "max" or "min".
  """
  split: str = "validation"
  mode: str = "decode"
  batch_size: int = 32
  max_examples: Optional[int] = None
  max_decode_length: Optional[int] = None
  best_metric: str = "accuracy"
  best_mode: str = "max"

  def __post_init__(self):
    if self.mode not in EVAL_MODES:
      raise ValueError(f"EvalConfig.mode={self.mode!r}; expected one of {EVAL_MODES}.")
    if self.best_mode not in ("max", "min"):
      raise ValueError(f"EvalConfig.best_mode={self.best_mode!r}; expected max or min.")


@dataclasses.dataclass
class EvalData:
  """What a data object hands to `evaluate`.

  Attributes:
    dataset: `pipeline.ArrayDataset` of converted features ([N, T] ...).
    compute_metrics: predicted ids [N, S] -> metrics dict.
    candidates: [C, S] candidate target ids for rank classification, or None.
    compute_rank_metrics: scores [N, C] -> metrics dict, or None.
  """
  dataset: Any
  compute_metrics: Callable[[np.ndarray], Mapping[str, float]]
  candidates: Optional[np.ndarray] = None
  compute_rank_metrics: Optional[Callable[[np.ndarray], Mapping[str, float]]] = None


def _loss(run, params, batches) -> dict:
  totals = {"loss": 0.0, "token_accuracy": 0.0, "target_tokens": 0.0}
  for batch, _ in batches:
    aux = jax.device_get(run.trainer.eval_step(params, run.backbone.params,
                                               run.trainer.place_batch(batch)))
    tokens = float(aux["target_tokens"])
    totals["loss"] += float(aux["loss"]) * tokens
    totals["token_accuracy"] += float(aux["token_accuracy"]) * tokens
    totals["target_tokens"] += tokens
  denom = max(totals["target_tokens"], 1.0)
  return {"loss": totals["loss"] / denom,
          "token_accuracy": totals["token_accuracy"] / denom}


def _batches(dataset, batch_size):
  for batch in pipeline.eval_batches(dataset, batch_size):
    mask = np.asarray(batch.pop("example_mask"))
    yield batch, mask


TARGET_FEATURES = ("decoder_input_tokens", "decoder_target_tokens",
                   "decoder_loss_weights")


def _inputs_only(batch):
  """The batch without target features: what decoding and scoring may see
  (the inputs and per-example method features such as `task_index`)."""
  return {k: v for k, v in batch.items() if k not in TARGET_FEATURES}


def predict(run, params, dataset, batch_size: int, max_decode_length: int) -> np.ndarray:
  """Greedy predictions [N, S] for every example of `dataset`, in order."""
  out = []
  for batch, mask in _batches(dataset, batch_size):
    inputs = run.trainer.place_batch(_inputs_only(batch))
    ids = run.trainer.predict(params, run.backbone.params, inputs, max_decode_length)
    out.append(np.asarray(jax.device_get(ids))[mask])
  return np.concatenate(out)


def rank_scores(run, params, dataset, batch_size: int,
                candidates: np.ndarray) -> np.ndarray:
  """Rank-classification scores [N, C]."""
  out = []
  for batch, mask in _batches(dataset, batch_size):
    inputs = run.trainer.place_batch(_inputs_only(batch))
    scores = run.trainer.rank_classify(params, run.backbone.params, inputs, candidates)
    out.append(np.asarray(jax.device_get(scores))[mask])
  return np.concatenate(out)


def evaluate(run, params, config: EvalConfig) -> dict:
  """Metrics of `params` on `config.split` of the run's data."""
  data = run.data.eval_data(config.split, config.max_examples)
  metrics = _loss(run, params, _batches(data.dataset, config.batch_size))
  if config.mode == "decode":
    length = config.max_decode_length or data.dataset.arrays[
        "decoder_target_tokens"].shape[1]
    preds = predict(run, params, data.dataset, config.batch_size, length)
    metrics.update(data.compute_metrics(preds))
  elif config.mode == "rank":
    if data.candidates is None or data.compute_rank_metrics is None:
      raise ValueError("EvalConfig.mode='rank' needs a task with label strings "
                       "(candidate targets); this task has none.")
    scores = rank_scores(run, params, data.dataset, config.batch_size,
                         data.candidates)
    metrics.update(data.compute_rank_metrics(scores))
  return {k: float(v) for k, v in metrics.items()}
