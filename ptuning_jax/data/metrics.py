"""Benchmark metrics, seqio-style: `fn(targets, predictions) -> {name: value}`.

Values are percentages (x100), as in T5 and DePT. Predictions arrive
postprocessed (`ptuning_jax.data.seqio.postprocessors`): class indices where an
invalid generation is `INVALID` (-1), floats for STS-B, strings for QA.
An invalid prediction is always wrong: accuracy never matches it, binary F1
and Matthews count it as the opposite of the target (T5/DePT
`f1_score_with_invalid`), multiclass F1 counts it as a miss of the target
class. Correlations of a constant prediction vector are NaN in scipy; they
are reported as 0 (DePT), never NaN.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Sequence

import numpy as np
import scipy.stats
import sklearn.metrics

Metric = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]


def _check(targets, predictions):
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} "
                     "predictions.")
  if not len(targets):  # pylint: disable=g-explicit-length-test
    raise ValueError("metrics need at least one example.")


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict:
  """Percentage of predictions equal to their target."""
  _check(targets, predictions)
  hits = [t == p for t, p in zip(targets, predictions)]
  return {"accuracy": 100.0 * float(np.mean(hits))}


def _binary_with_invalid(targets, predictions):
  targets = np.asarray(targets, dtype=np.int64)
  predictions = np.asarray(predictions, dtype=np.int64).copy()
  if not np.isin(targets, (0, 1)).all():
    raise ValueError(f"binary targets must be 0/1, got {np.unique(targets)}.")
  invalid = ~np.isin(predictions, (0, 1))
  predictions[invalid] = 1 - targets[invalid]
  return targets, predictions


def f1_binary(targets: Sequence[int], predictions: Sequence[int]) -> dict:
  """F1 of class 1; an invalid prediction counts as the wrong class."""
  _check(targets, predictions)
  t, p = _binary_with_invalid(targets, predictions)
  return {"f1": 100.0 * sklearn.metrics.f1_score(t, p, zero_division=0.0)}


def matthews_corrcoef(targets: Sequence[int],
                      predictions: Sequence[int]) -> dict:
  """Matthews correlation (CoLA); invalid predictions count as wrong."""
  _check(targets, predictions)
  t, p = _binary_with_invalid(targets, predictions)
  return {"matthews_corrcoef":
          100.0 * sklearn.metrics.matthews_corrcoef(t, p)}


def mean_multiclass_f1(num_classes: int) -> Metric:
  """Unweighted mean of per-class F1 over classes 0..num_classes-1 (CB)."""
  def fn(targets, predictions):
    _check(targets, predictions)
    value = sklearn.metrics.f1_score(
        np.asarray(targets), np.asarray(predictions),
        labels=list(range(num_classes)), average="macro", zero_division=0.0)
    return {f"mean_{num_classes}class_f1": 100.0 * value}
  fn.__name__ = f"mean_{num_classes}class_f1"
  return fn


def _correlation(name, fn, targets, predictions):
  _check(targets, predictions)
  t = np.asarray(targets, dtype=np.float64)
  p = np.asarray(predictions, dtype=np.float64)
  if np.ptp(t) == 0 or np.ptp(p) == 0:
    return {name: 0.0}
  return {name: 100.0 * float(fn(t, p)[0])}


def pearson_corrcoef(targets: Sequence[float],
                     predictions: Sequence[float]) -> dict:
  return _correlation("pearson_corrcoef", scipy.stats.pearsonr, targets,
                      predictions)


def spearman_corrcoef(targets: Sequence[float],
                      predictions: Sequence[float]) -> dict:
  return _correlation("spearman_corrcoef", scipy.stats.spearmanr, targets,
                      predictions)


# ------------------------------------------------------------------ QA

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_squad(text: str) -> str:
  """SQuAD's normalisation: lower, drop punctuation and articles, squash."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(target: str, prediction: str) -> float:
  pred, gold = prediction.split(), target.split()
  common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(pred), common / len(gold)
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]],
          predictions: Sequence[str]) -> dict:
  """Exact match and token F1 after SQuAD normalisation, max over answers.

  Args:
    targets: per example, the gold answers (a bare string counts as one).
    predictions: per example, the predicted answer.

  Returns:
    {"em": ..., "f1": ...} in percent.
  """
  _check(targets, predictions)
  em, f1 = [], []
  for gold, pred in zip(targets, predictions):
    gold = [gold] if isinstance(gold, str) else list(gold)
    if not gold:
      raise ValueError("an example has no gold answer.")
    gold = [normalize_squad(g) for g in gold]
    pred = normalize_squad(pred)
    em.append(max(float(g == pred) for g in gold))
    f1.append(max(_token_f1(g, pred) for g in gold))
  return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


def record(targets: Sequence[dict], predictions: Sequence[dict]) -> dict:
  """ReCoRD: one prediction per (passage, query) group, SQuAD EM/F1.

  Eval examples are repeated once per answer; only the first of each group
  counts (T5 `deduplicate_metric(squad)`), scored against all its answers.
  """
  _check(targets, predictions)
  seen, gold, pred = set(), [], []
  for t, p in zip(targets, predictions):
    if t["group"] in seen:
      continue
    seen.add(t["group"])
    gold.append(t["value"])
    pred.append(p["value"])
  return squad(gold, pred)


def multirc_f1(targets: Sequence[dict], predictions: Sequence[dict]) -> dict:
  """MultiRC F1 over all answer options (F1a)."""
  return f1_binary([t["value"] for t in targets],
                   [p["value"] for p in predictions])


def multirc_exact_match(targets: Sequence[dict],
                        predictions: Sequence[dict]) -> dict:
  """MultiRC EM: mean over questions of 'every answer option is right'."""
  _check(targets, predictions)
  groups = collections.defaultdict(list)
  for t, p in zip(targets, predictions):
    groups[t["group"]].append(t["value"] == p["value"])
  return {"exact_match":
          100.0 * float(np.mean([all(v) for v in groups.values()]))}
