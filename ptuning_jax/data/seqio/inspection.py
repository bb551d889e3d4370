"""What `ptuning-jax tasks` and `ptuning-jax inspect TASK` print.

`list_tasks` lists the registered benchmark tasks and mixtures with their
split sizes: reference sizes by default (no data read; `ref`), or counted
from the configured source (`with_sizes=True`, reads every split).
`inspect_task` shows examples as the model sees them: the formatted input
and target text and their token counts (EOS included), flagging inputs
longer than a given `sequence_length`.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from ptuning_jax.data.seqio import lester_tasks
from ptuning_jax.data.seqio import mixtures
from ptuning_jax.data.seqio import mpt_tasks
from ptuning_jax.data.seqio import postprocessors

_ = mixtures  # imported to register the mixtures.
label_strings = postprocessors.label_strings


@dataclasses.dataclass
class TaskRow:
  """One line of the task table.

  Attributes:
    name: task or mixture name.
    kind: "task" or "mixture".
    splits: split -> size (None: unknown); `counted` says where from.
    counted: sizes counted from the data (True) or reference sizes (False).
    note: error text or the mixture's task count.
  """
  name: str
  kind: str
  splits: dict[str, Optional[int]]
  counted: bool = False
  note: str = ""


def _resolve(name: str) -> seqio.Task | seqio.Mixture:
  mpt_tasks.ensure_registered(name)
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    raise ValueError(f"no task or mixture named {name!r}; `ptuning-jax tasks` "
                     "lists them.") from None


def _task_row(task: seqio.Task, with_sizes: bool) -> TaskRow:
  if not with_sizes:
    ref = (mpt_tasks.reference_sizes(task.name)
           or lester_tasks.reference_sizes(task.name) or {})
    return TaskRow(task.name, "task", {s: ref.get(s) for s in task.splits})
  sizes, note = {}, ""
  for split in task.splits:
    try:
      sizes[split] = task.num_input_examples(split)
    except (FileNotFoundError, ValueError) as e:
      sizes[split] = None
      note = str(e).splitlines()[0]
  return TaskRow(task.name, "task", sizes, counted=True, note=note)


def list_tasks(with_sizes: bool = False,
               prefixes: Sequence[str] = ()) -> list[TaskRow]:
  """Registered tasks and mixtures (optionally only names with `prefixes`)."""
  rows = []
  for name in sorted(seqio.TaskRegistry.names()):
    if prefixes and not name.startswith(tuple(prefixes)):
      continue
    rows.append(_task_row(seqio.TaskRegistry.get(name), with_sizes))
  for name in sorted(seqio.MixtureRegistry.names()):
    if prefixes and not name.startswith(tuple(prefixes)):
      continue
    mix = seqio.MixtureRegistry.get(name)
    rows.append(TaskRow(name, "mixture", {s: None for s in sorted(mix.splits)},
                        note=f"{len(mix.tasks)} tasks"))
  return rows


def format_task_table(rows: Sequence[TaskRow]) -> str:
  """A plain-text table of `list_tasks` rows."""
  lines = []
  width = max([len(r.name) for r in rows] + [4])
  lines.append(f"{'name':<{width}}  {'kind':<7}  splits")
  for r in rows:
    parts = []
    for split, size in r.splits.items():
      shown = "?" if size is None else f"{size:,}"
      if r.kind == "mixture":
        shown = ""
      parts.append(f"{split}={shown}" if shown else split)
    tag = "" if r.kind == "mixture" else ("" if r.counted else " (ref)")
    note = f"  [{r.note}]" if r.note else ""
    lines.append(f"{r.name:<{width}}  {r.kind:<7}  {' '.join(parts)}{tag}"
                 f"{note}")
  return "\n".join(lines)


def _decode(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _format_example(i: int, ex: Mapping, seq: Optional[Mapping[str, int]]):
  lines = [f"--- example {i}"]
  for key in ("inputs", "targets"):
    n = len(ex[key]) if key in ex else 0
    limit = (seq or {}).get(key)
    over = f" > {key} length {limit}: truncated" if limit and n > limit else ""
    text = _decode(ex.get(f"{key}_pretokenized", b""))
    lines.append(f"{key} ({n} tokens incl. EOS{over}): {text}")
  extras = sorted(k for k in ex if k not in (
      "inputs", "targets", "inputs_pretokenized", "targets_pretokenized"))
  if extras:
    lines.append("extra features: " + ", ".join(extras))
  return lines


def inspect_task(name: str, split: str = "validation", n: int = 3,
                 sequence_length: Optional[Mapping[str, int]] = None) -> str:
  """The first `n` examples of a task (or of each task of a mixture).

  Args:
    name: task or mixture name (grammar names are registered on demand).
    split: the split to read.
    n: examples per task.
    sequence_length: optional {"inputs": T, "targets": S}; longer examples
      are flagged (nothing is truncated in the display).

  Returns:
    the formatted text.
  """
  if n < 1:
    raise ValueError(f"n={n} must be positive.")
  provider = _resolve(name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  out = []
  for task in tasks:
    if split not in task.splits:
      raise ValueError(f"task {task.name!r} has no split {split!r}; it has "
                       f"{list(task.splits)}.")
    out.append(f"=== {task.name} [{split}]")
    if postprocessors.has_labels(task.name):
      out.append("labels: " + ", ".join(postprocessors.label_strings(
          task.name)))
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False,
                          num_epochs=1, try_in_mem_cache=False)
    for i, ex in enumerate(ds.take(n).as_numpy_iterator()):
      out += _format_example(i, ex, sequence_length)
  return "\n".join(out)


_TOKEN_STEPS = (seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim)


def _fill(spec, values: Mapping) -> dict:
  """A raw example of `spec` (nested TensorSpecs): `values` plus empty
  defaults ("" / [] for strings, 0 otherwise)."""
  out = {}
  for key, s in spec.items():
    if isinstance(s, dict):
      out[key] = _fill(s, values.get(key, {}))
    elif key in values:
      out[key] = values[key]
    elif s.dtype == tf.string:
      out[key] = [] if s.shape.rank else ""
    else:
      out[key] = 0
  return out


def _to_python(value):
  if isinstance(value, bytes):
    return value.decode()
  if isinstance(value, np.ndarray) and value.dtype == object:
    return [x.decode() for x in value]
  return value.item() if isinstance(value, np.generic) else value


def preprocess_text(task_name: str, *raw_examples: Mapping) -> list[dict]:
  """The task's text preprocessors (everything before tokenization) applied
  to raw examples given as dicts of the source's fields (missing fields are
  empty); returns the resulting examples as Python values. Shows exactly
  what a task makes of an input, without reading its data."""
  task = seqio.get_mixture_or_task(task_name)
  spec = task.source.raw.signature
  examples = [_fill(spec, r) for r in raw_examples]
  ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)
  for prep in task.preprocessors:
    if prep in _TOKEN_STEPS or isinstance(prep, seqio.CacheDatasetPlaceholder):
      continue
    ds = prep(ds)
  return [{k: _to_python(v) for k, v in ex.items()} for ex in ds.as_numpy_iterator()]
