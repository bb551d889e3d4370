"""Periodic evaluation: loss, decoding metrics, rank classification or a
classifier's outputs.

Dimension letters: N examples, B eval batch, T input length, S target length,
C candidate targets or classes.

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

EVAL_MODES = ("auto", "loss", "decode", "rank", "classify")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Attributes:
    split: the split to evaluate.
    mode: "loss" (the task loss only), "decode" (greedy decoding and the
      task's metrics), "rank" (rank classification over the task's label
      strings, then the task's metrics), "classify" (a classifier's outputs
      and the task's metrics) or "auto" (the default: "classify" for
      classification data, else "decode").
    batch_size: eval batch size (a multiple of the mesh's data axis).
    max_examples: evaluate only the first N examples.
    max_decode_length: decode length; default the targets feature length.
    best_metric: metric that picks the best checkpoint ("eval/" omitted).
    best_mode: "max" or "min".
  """
  split: str = "validation"
  mode: str = "auto"
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
    compute_metrics: predicted ids [N, S] -> metrics dict (text data), or
      None.
    candidates: [C, S] candidate target ids for rank classification, or None.
    compute_rank_metrics: scores [N, C] -> metrics dict, or None.
    compute_output_metrics: a classifier's outputs ([N, C] logits or [N]
      scores) -> metrics dict (classification data), or None.
  """
  dataset: Any
  compute_metrics: Optional[Callable[[np.ndarray], Mapping[str, float]]] = None
  candidates: Optional[np.ndarray] = None
  compute_rank_metrics: Optional[Callable[[np.ndarray], Mapping[str, float]]] = None
  compute_output_metrics: Optional[Callable[[np.ndarray], Mapping[str, float]]] = None


def _loss(run, params, batches) -> dict:
  totals = {"loss": 0.0, "token_accuracy": 0.0, "target_tokens": 0.0}
  for batch, _ in batches:
    aux = jax.device_get(run.trainer.eval_step(params, run.frozen,
                                               run.trainer.place_batch(batch)))
    tokens = float(aux["target_tokens"])
    totals["loss"] += float(aux["loss"]) * tokens
    totals["token_accuracy"] += float(aux["token_accuracy"]) * tokens
    totals["target_tokens"] += tokens
  denom = max(totals["target_tokens"], 1.0)
  return {"loss": totals["loss"] / denom,
          "token_accuracy": totals["token_accuracy"] / denom}


def _batches(dataset, batch_size):
  """(batch, mask [B] of its real rows); the batch keeps `example_mask`, the
  weights of a classifier's loss (a seq2seq loss weighs by its targets)."""
  for batch in pipeline.eval_batches(dataset, batch_size):
    yield batch, np.asarray(batch["example_mask"]).astype(bool)


TARGET_FEATURES = ("decoder_input_tokens", "decoder_target_tokens",
                   "decoder_loss_weights", "label", "example_mask")


def _inputs_only(batch):
  """The batch without target features: what decoding and scoring may see
  (the inputs and per-example method features such as `task_index`)."""
  return {k: v for k, v in batch.items() if k not in TARGET_FEATURES}


def _collect(run, name: str, params, dataset, batch_size: int, *extras,
             **static) -> np.ndarray:
  """`run.trainer.call(name, ...)` over every batch; rows of real examples."""
  out = []
  for batch, mask in _batches(dataset, batch_size):
    inputs = run.trainer.place_batch(_inputs_only(batch))
    value = run.trainer.call(name, params, run.frozen, inputs, *extras,
                             **static)
    out.append(np.asarray(jax.device_get(value))[mask])
  return np.concatenate(out)


def predict(run, params, dataset, batch_size: int, max_decode_length: int,
            eos_id: int = 1) -> np.ndarray:
  """Greedy predictions [N, S] for every example of `dataset`, in order."""
  return _collect(run, "predict_batch", params, dataset, batch_size,
                  max_decode_length=max_decode_length, eos_id=eos_id)


def rank_scores(run, params, dataset, batch_size: int,
                candidates: np.ndarray) -> np.ndarray:
  """Rank-classification scores [N, C]."""
  return _collect(run, "rank_classify", params, dataset, batch_size, candidates)


def classifier_outputs(run, params, dataset, batch_size: int) -> np.ndarray:
  """A classifier's outputs ([N, C] logits or [N] scores), in order."""
  return _collect(run, "predict", params, dataset, batch_size)


def resolve_mode(mode: str, data: EvalData) -> str:
  if mode != "auto":
    return mode
  return "classify" if data.compute_output_metrics is not None else "decode"


def evaluate(run, params, config: EvalConfig) -> dict:
  """Metrics of `params` on `config.split` of the run's data."""
  data = run.data.eval_data(config.split, config.max_examples)
  metrics = _loss(run, params, _batches(data.dataset, config.batch_size))
  mode = resolve_mode(config.mode, data)
  if mode == "decode":
    if data.compute_metrics is None:
      raise ValueError("EvalConfig.mode='decode' needs text-to-text data; this task "
                       "is scored by a classifier (mode 'classify').")
    length = config.max_decode_length or data.dataset.arrays[
        "decoder_target_tokens"].shape[1]
    preds = predict(run, params, data.dataset, config.batch_size, length)
    metrics.update(data.compute_metrics(preds))
  elif mode == "rank":
    if data.candidates is None or data.compute_rank_metrics is None:
      raise ValueError("EvalConfig.mode='rank' needs a task with label strings "
                       "(candidate targets); this task has none.")
    scores = rank_scores(run, params, data.dataset, config.batch_size,
                         data.candidates)
    metrics.update(data.compute_rank_metrics(scores))
  elif mode == "classify":
    if data.compute_output_metrics is None:
      raise ValueError("EvalConfig.mode='classify' needs classification data (a "
                       "classifier head); this task is text-to-text.")
    metrics.update(data.compute_output_metrics(
        classifier_outputs(run, params, data.dataset, config.batch_size)))
  return {k: float(v) for k, v in metrics.items()}
