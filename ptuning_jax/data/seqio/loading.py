"""seqio Tasks / Mixtures -> NumPy arrays, and seqio-faithful evaluation.

`task_arrays` runs a registered task's full seqio pipeline once
(`get_dataset(shuffle=False, use_cached=False, num_epochs=1)`), converts the
tokenized examples into the encoder-decoder arrays of
`ptuning_jax.data.pipeline` and keeps every example's fields (the
`*_pretokenized` text, labels, indices, the token arrays) as metadata, so
metrics can see the `example` seqio would pass to `postprocess_fn`.

`evaluate_predictions` and `evaluate_scores` reproduce what seqio's evaluator
does with `task.predict_metric_fns`: targets are the `targets_pretokenized`
text (or the decoded `targets` tokens) passed through
`task.postprocess_fn(target, example=ex, is_target=True)`; predictions are
decoded with the task's `targets` vocabulary and passed through
`task.postprocess_fn(pred, example=ex, is_target=False)`. Only
`predict_metric_fns` run: `score_metric_fns` (per-example target
log-likelihoods), `predict_with_aux_metric_fns` and clu `metric_objs` given
to a Task directly are not supported here.

Dimension letters: N examples, T input length, S target length, C candidate
answers (rank classification).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import seqio

from ptuning_jax.data import pipeline

ArrayDataset = pipeline.ArrayDataset


@dataclasses.dataclass
class MixtureArrays:
  """Per-task arrays of a mixture and their mixing rates (MixtureIterator)."""
  datasets: dict[str, ArrayDataset]
  rates: dict[str, float]


def _task(task: str | seqio.Task) -> seqio.Task:
  if isinstance(task, seqio.Task):
    return task
  provider = seqio.get_mixture_or_task(task)
  if not isinstance(provider, seqio.Task):
    raise ValueError(f"{task!r} is a mixture; evaluation needs a single task.")
  return provider


def _check_lengths(name: str, feature_lengths: Mapping[str, int]):
  for key in ("inputs", "targets"):
    if key not in feature_lengths or int(feature_lengths[key]) < 1:
      raise ValueError(f"{name}: feature_lengths needs a positive {key!r}, "
                       f"got {dict(feature_lengths)}.")


def _single_task_arrays(task: seqio.Task, split: str,
                        feature_lengths: Mapping[str, int],
                        max_examples: Optional[int], shard_index: int,
                        num_shards: int) -> ArrayDataset:
  """Materializes one task split; see `task_arrays`."""
  if split not in task.splits:
    raise ValueError(f"task {task.name!r} has no split {split!r}; it has "
                     f"{list(task.splits)}.")
  for key in ("inputs", "targets"):
    if key not in task.output_features:
      raise ValueError(f"task {task.name!r} has no {key!r} output feature "
                       f"(has {list(task.output_features)}).")
  ds = task.get_dataset(dict(feature_lengths), split=split, shuffle=False,
                        use_cached=False, num_epochs=1,
                        try_in_mem_cache=False)
  if max_examples is not None:
    ds = ds.take(max_examples)
  if num_shards > 1:
    ds = ds.shard(num_shards, shard_index)
  metadata = list(ds.as_numpy_iterator())
  if not metadata:
    raise ValueError(f"task {task.name!r} split {split!r} (shard "
                     f"{shard_index}/{num_shards}) produced no examples.")
  arrays = pipeline.convert_examples(
      metadata, feature_lengths,
      append_eos_inputs=task.output_features["inputs"].add_eos,
      append_eos_targets=task.output_features["targets"].add_eos)
  return ArrayDataset(arrays, metadata)


def task_arrays(task_or_mixture_name: str, split: str,
                feature_lengths: Mapping[str, int], *,
                max_examples: Optional[int] = None, shard_index: int = 0,
                num_shards: int = 1) -> ArrayDataset | MixtureArrays:
  """A task's (or each mixture task's) preprocessed examples as arrays.

  Args:
    task_or_mixture_name: a registered seqio Task or Mixture.
    split: split name, e.g. `train` or `validation`.
    feature_lengths: `{"inputs": T, "targets": S}`; seqio trims to these
      (keeping EOS), then arrays are padded to them.
    max_examples: keep only the first examples (per task), before sharding.
    shard_index: which shard to keep ...
    num_shards: ... of this many; shard `i` holds examples `i, i + k, ...` of
      the unsharded (first `max_examples`) examples.

  Returns:
    For a task, an `ArrayDataset` ([N, T] / [N, S] arrays, metadata = the
    seqio examples as NumPy dicts). For a mixture, `MixtureArrays` of its
    sub-tasks having `split` with nonzero rate (`Mixture.get_rate`).
  """
  _check_lengths(task_or_mixture_name, feature_lengths)
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index={shard_index} is not in "
                     f"[0, num_shards={num_shards}).")
  provider = seqio.get_mixture_or_task(task_or_mixture_name)
  kwargs = dict(max_examples=max_examples, shard_index=shard_index,
                num_shards=num_shards)
  if isinstance(provider, seqio.Task):
    return _single_task_arrays(provider, split, feature_lengths, **kwargs)
  datasets, rates = {}, {}
  for task in provider.tasks:
    rate = provider.get_rate(task)
    if split not in task.splits or rate <= 0:
      continue
    datasets[task.name] = _single_task_arrays(task, split, feature_lengths,
                                              **kwargs)
    rates[task.name] = float(rate)
  if not datasets:
    raise ValueError(f"mixture {provider.name!r}: no task has split "
                     f"{split!r} with a positive rate.")
  return MixtureArrays(datasets, rates)


# ---------------------------------------------------------------- evaluation


@dataclasses.dataclass
class EvalSet:
  """An evaluation split with what metrics need.

  Attributes:
    task_name: the seqio task.
    dataset: arrays [N, ...] and metadata (the seqio examples).
    targets: N raw target strings (pretokenized, or decoded tokens).
    label_strings: rank-classification candidates, or None.
    candidate_targets: [C, S] int32 padded candidate target ids (with EOS if
      the task's targets have it), or None.
  """
  task_name: str
  dataset: ArrayDataset
  targets: list[str]
  label_strings: Optional[tuple[str, ...]] = None
  candidate_targets: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.dataset)


def _as_str(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def raw_targets(task: seqio.Task, metadata: Sequence[Mapping[str, Any]]
                ) -> list[str]:
  """seqio's target text: `targets_pretokenized`, else decoded `targets`."""
  vocab = task.output_features["targets"].vocabulary
  return [_as_str(ex["targets_pretokenized"]) if "targets_pretokenized" in ex
          else _as_str(vocab.decode([int(i) for i in ex["targets"]]))
          for ex in metadata]


def candidate_targets(task: str | seqio.Task, label_strings: Sequence[str],
                      target_length: int) -> np.ndarray:
  """[C, S] int32 padded token ids of each candidate answer."""
  task = _task(task)
  feature = task.output_features["targets"]
  rows = []
  for label in label_strings:
    ids = feature.vocabulary.encode(label)
    if len(ids) + int(feature.add_eos) > target_length:
      raise ValueError(f"candidate {label!r} needs {len(ids)} tokens (+EOS), "
                       f"more than target_length={target_length}.")
    rows.append(pipeline.pad_sequence(
        ids, target_length, append_eos=feature.add_eos,
        name=f"candidate {label!r}"))
  return np.stack(rows)


def load_eval_set(task_name: str, split: str,
                  feature_lengths: Mapping[str, int], *,
                  max_examples: Optional[int] = None,
                  label_strings: Optional[Sequence[str]] = None,
                  shard_index: int = 0, num_shards: int = 1) -> EvalSet:
  """Loads a task split for evaluation (see `task_arrays`)."""
  task = _task(task_name)
  dataset = task_arrays(task.name, split, feature_lengths,
                        max_examples=max_examples, shard_index=shard_index,
                        num_shards=num_shards)
  labels = cands = None
  if label_strings is not None:
    labels = tuple(label_strings)
    if len(set(labels)) != len(labels) or not labels:
      raise ValueError(f"label_strings must be distinct and non-empty: "
                       f"{labels}")
    cands = candidate_targets(task, labels, feature_lengths["targets"])
  return EvalSet(task.name, dataset, raw_targets(task, dataset.metadata),
                 labels, cands)


def _postprocessed_targets(task: seqio.Task, eval_set: EvalSet) -> list[Any]:
  return [task.postprocess_fn(t, example=ex, is_target=True)
          for t, ex in zip(eval_set.targets, eval_set.dataset.metadata)]


def _run_metric_fns(metric_fns, **kwargs) -> dict[str, Any]:
  metrics = {}
  for fn in metric_fns:
    result = fn(**kwargs)
    clash = set(result) & set(metrics)
    if clash:
      raise ValueError(f"metric fn {fn} reports {sorted(clash)} already "
                       f"reported by another metric fn.")
    metrics.update(result)
  return metrics


def _metric_task(task: str | seqio.Task, eval_set: EvalSet) -> seqio.Task:
  task = _task(task)
  if task.name != eval_set.task_name:
    raise ValueError(f"eval set of {eval_set.task_name!r} evaluated with "
                     f"task {task.name!r}.")
  return task


def decode_predictions(task: str | seqio.Task,
                       predicted_ids: np.ndarray) -> list[str]:
  """[N, S] ids -> N strings with the task's `targets` vocabulary."""
  vocab = _task(task).output_features["targets"].vocabulary
  predicted_ids = np.asarray(predicted_ids)
  if predicted_ids.ndim != 2:
    raise ValueError(f"predicted_ids must be [N, S], got shape "
                     f"{predicted_ids.shape}.")
  return [_as_str(vocab.decode(row.tolist())) for row in predicted_ids]


def evaluate_predictions(task: str | seqio.Task, eval_set: EvalSet,
                         predicted_ids: np.ndarray) -> dict[str, Any]:
  """`task.predict_metric_fns` on decoded, postprocessed predictions.

  Args:
    task: the seqio task (or its name) of `eval_set`.
    eval_set: from `load_eval_set`.
    predicted_ids: [N, S] int decoded token ids, in eval-set order (padding
      rows of the last batch already removed).

  Returns:
    The merged metric dicts.
  """
  task = _metric_task(task, eval_set)
  if np.shape(predicted_ids)[0] != len(eval_set):
    raise ValueError(f"predicted_ids has {np.shape(predicted_ids)[0]} rows, "
                     f"the eval set {eval_set.task_name!r} has "
                     f"{len(eval_set)} examples.")
  decoded = decode_predictions(task, predicted_ids)
  predictions = [task.postprocess_fn(p, example=ex, is_target=False)
                 for p, ex in zip(decoded, eval_set.dataset.metadata)]
  return _run_metric_fns(task.predict_metric_fns,
                         targets=_postprocessed_targets(task, eval_set),
                         predictions=predictions)


def evaluate_scores(task: str | seqio.Task, eval_set: EvalSet,
                    scores: np.ndarray) -> dict[str, Any]:
  """Rank classification: argmax candidate -> label string -> metric fns.

  Args:
    task: the seqio task (or its name) of `eval_set`.
    eval_set: built with `label_strings`.
    scores: [N, C] per-candidate scores (e.g. summed target log-likelihood);
      ties go to the first candidate.

  Returns:
    `task.predict_metric_fns` on the chosen label strings, postprocessed as
    decoded predictions would be.
  """
  task = _metric_task(task, eval_set)
  if eval_set.label_strings is None:
    raise ValueError(f"eval set of {eval_set.task_name!r} has no "
                     "label_strings; pass load_eval_set(label_strings=...).")
  scores = np.asarray(scores)
  expected = (len(eval_set), len(eval_set.label_strings))
  if scores.shape != expected:
    raise ValueError(f"scores must be [N, C] = {expected}, got {scores.shape}.")
  chosen = [eval_set.label_strings[i] for i in np.argmax(scores, axis=-1)]
  predictions = [task.postprocess_fn(p, example=ex, is_target=False)
                 for p, ex in zip(chosen, eval_set.dataset.metadata)]
  return _run_metric_fns(task.predict_metric_fns,
                         targets=_postprocessed_targets(task, eval_set),
                         predictions=predictions)
