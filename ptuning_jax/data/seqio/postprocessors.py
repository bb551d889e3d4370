"""Generated strings -> values the metrics compare, and the label registry.

seqio calls a task's `postprocess_fn(text, example=ex, is_target=...)` on
both the decoded prediction and the target text. Classification strings map
to class indices; a string that is not a label maps to `INVALID` (-1), which
no metric counts as correct (`ptuning_jax.data.metrics`).

`label_strings(task)` gives a classification task's class-label strings in
class-index order (rank-classification candidates, class-label prompt
initialisation); tasks register them with `register_labels`.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping, Optional, Sequence

from ptuning_jax.data.seqio import labels as labels_registry

INVALID = -1

_LABELS: dict[str, tuple[str, ...]] = {}


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def register_labels(task_name: str, labels: Sequence[str]):
  """Records the class-label strings of `task_name` (class-index order).

  They are also registered with the run-wide registry `data.labels`, which
  the trainer reads.
  """
  labels = tuple(labels)
  if not labels or len(set(labels)) != len(labels) or not all(labels):
    raise ValueError(f"task {task_name!r}: labels {labels} must be distinct "
                     "non-empty strings.")
  _LABELS[task_name] = labels
  labels_registry.register(task_name, labels)


def label_strings(task_name: str) -> list[str]:
  """Class-label strings of a classification task, in class-index order."""
  if task_name not in _LABELS:
    # Registering tasks imports TF and seqio: deferred until asked for.
    importlib.import_module("ptuning_jax.data.seqio.lester_tasks")
    mpt_tasks = importlib.import_module("ptuning_jax.data.seqio.mpt_tasks")
    mpt_tasks.ensure_registered(task_name)
  if task_name not in _LABELS:
    raise KeyError(f"task {task_name!r} has no class labels (not a registered "
                   "classification task).")
  return list(_LABELS[task_name])


def has_labels(task_name: str) -> bool:
  return task_name in _LABELS


def string_label_to_class_id(text: Any, label_classes: Sequence[str],
                             example: Optional[Mapping] = None,
                             is_target: bool = False) -> int:
  """Index of `text` in `label_classes` (after stripping), else `INVALID`."""
  del example, is_target
  text = _text(text).strip()
  return list(label_classes).index(text) if text in label_classes else INVALID


def string_to_float(text: Any, default: float = -1.0,
                    example: Optional[Mapping] = None,
                    is_target: bool = False) -> float:
  """float(text), or `default` (-1, below STS-B's range) when not a number."""
  del example, is_target
  try:
    return float(_text(text))
  except ValueError:
    return default


def multirc(text: Any, label_classes: Sequence[str],
            example: Optional[Mapping] = None,
            is_target: bool = False) -> dict[str, Any]:
  """{"value": class index, "group": question index (targets only)}."""
  out = {"value": string_label_to_class_id(text, label_classes)}
  if is_target:
    out["group"] = int(example["idx/question"])
  return out


def qa(text: Any, example: Optional[Mapping] = None,
       is_target: bool = False) -> Any:
  """Predictions: the text; targets: all gold answers of the example."""
  if is_target:
    return [_text(a) for a in example["answers"]]
  return _text(text)


def record(text: Any, example: Optional[Mapping] = None,
           is_target: bool = False) -> dict[str, Any]:
  """ReCoRD: {"value": text | all answers, "group": (passage, query)}."""
  if is_target:
    return {"value": [_text(a) for a in example["answers"]],
            "group": (int(example["idx/passage"]), int(example["idx/query"]))}
  return {"value": _text(text)}


_DETERMINERS = frozenset((
    "a", "an", "few", "her", "his", "each", "every", "many", "much", "my",
    "our", "some", "that", "the", "their", "these", "this", "those", "which",
    "whose", "your"))


def wsc_simple(text: Any, example: Optional[Mapping] = None,
               is_target: bool = False) -> int:
  """T5 `wsc_simple`: 1 if the prediction names the example's referent.

  Targets give the example's label (is the noun the pronoun's referent).
  """
  if is_target:
    return int(example["label"])

  def clean(s):
    s = s.strip().lower()
    return " ".join(w for w in s.split(" ") if w not in _DETERMINERS)

  referent = clean(_text(example["targets_pretokenized"]))
  prediction = clean(_text(text))
  if ("'" in prediction) != ("'" in referent):
    return 0
  p, r = set(prediction.split(" ")), set(referent.split(" "))
  return int(p.issubset(r) or r.issubset(p))
