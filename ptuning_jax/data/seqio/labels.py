"""Registry of class-label strings per task (rank classification, label init).

Task modules call `register(task_name, labels)` next to
`seqio.TaskRegistry.add`; runs look labels up with `get(task_name)`.
"""
from __future__ import annotations

from typing import Optional, Sequence

_LABELS: dict[str, tuple[str, ...]] = {}


def register(task_name: str, labels: Sequence[str]) -> None:
  labels = tuple(labels)
  if not labels or len(set(labels)) != len(labels):
    raise ValueError(f"{task_name}: label strings must be distinct and non-empty: {labels}")
  _LABELS[task_name] = labels


def get(task_name: str) -> Optional[tuple[str, ...]]:
  """The task's label strings, or None for generation tasks."""
  if task_name in _LABELS:
    return _LABELS[task_name]
  from ptuning_jax.data.seqio import synthetic_tasks  # pylint: disable=g-import-not-at-top
  if not task_name.startswith(synthetic_tasks.PREFIX):
    return None  # a registered generation task (e.g. mpt_nq, ReCoRD).
  return synthetic_tasks.label_strings(task_name)
