"""Composing methods: start one method from another's prompt; merge hook sets.

Methods compose where the papers do:
  * any method starts from a prompt file: every method's prompt-like
    parameter has an initialiser attribute (`initializer` of SoftPrompt,
    DePT, low-rank, residual, prefix tuning, MPT and XPrompt;
    `shared_initializer` / `task_initializer` of multi-task prompts), and
    `from_npy(path)` loads any `.npy` of that parameter's shape, optionally a
    block of rows of a longer prompt; `started_from(factory, path)` binds it;
  * DePT initialised from an MPT or transferred prompt (DePT's transfer
    setting): `from_mpt(source, task)` gives MPT's task prompt
    P* (elementwise) U_k V_k (or, with no task, the prompt of the averaged
    factors, MPT's target initialisation), of which DePT's shorter prompt
    takes the first m rows; a transferred (SPoT) prompt is a plain
    `from_npy` file;
  * hook sets combine: `Composed` runs several methods side by side and
    merges their hooks with `hooks.Hooks.merge` (e.g. a prompt with (IA)^3
    rescalings); each part's parameters live under its own name.

Dimension letters: P rows of the file, m rows taken, H embed width.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax.training import checkpoints
from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.methods import mpt

Array = jax.Array


def _take_rows(value: np.ndarray, shape: tuple[int, ...], start: int, what: str
               ) -> np.ndarray:
  """Rows [start, start + shape[0]) of `value` (the whole of it when it
  already has `shape`), checked."""
  if tuple(value.shape) == tuple(shape) and start == 0:
    return value
  if value.ndim != len(shape) or tuple(value.shape[1:]) != tuple(shape[1:]):
    raise ValueError(f"{what} holds shape {value.shape}; the parameter needs "
                     f"{tuple(shape)} (a block of rows needs equal trailing dims).")
  if start < 0 or start + shape[0] > value.shape[0]:
    raise ValueError(f"{what} has {value.shape[0]} rows; rows [{start}, "
                     f"{start + shape[0]}) were asked for.")
  return value[start:start + shape[0]]


def from_npy(path: str, start: int = 0) -> initializers.Initializer:
  """Initialiser: a saved `.npy` (any shape), or rows [start, start + m) of a
  longer one (e.g. the first m rows of a 100-token prompt for DePT's m)."""
  def init(rng, shape, context):
    del rng, context
    value = checkpoints.load_npy(path, np.float32)
    return jnp.asarray(_take_rows(value, tuple(shape), start, f"from_npy: {path}"))
  return init


def mpt_prompt(source: str, task: Optional[int] = None,
               length: Optional[int] = None) -> np.ndarray:
  """MPT's task prompt P* (elementwise) U_k V_k [P, H] from a stage-one result.

  Args:
    source: an MPT `.npy` export directory or PEFT adapter (`mpt.load_source`).
    task: the source task k; None averages the factors over the tasks first
      (MPT's target initialisation, "AVERAGE_SOURCE_TASKS").
    length: P (default: the export's).
  """
  if length is None:
    length = mpt.source_length(source)
  values = mpt.load_source(source, length)
  cols, rows = values[mpt.COLS], values[mpt.ROWS]
  if task is None:
    cols, rows, task = cols.mean(0, keepdims=True), rows.mean(0, keepdims=True), 0
  elif not 0 <= task < cols.shape[0]:
    raise ValueError(f"mpt_prompt: task={task} outside the {cols.shape[0]} tasks of "
                     f"{source}.")
  prompt = mpt.task_prompts(jnp.asarray(values[mpt.PROMPT]), jnp.asarray(cols),
                            jnp.asarray(rows), jnp.asarray([task]))[0]
  return np.asarray(prompt, np.float32)


def from_mpt(source: str, task: Optional[int] = None, start: int = 0,
             length: Optional[int] = None) -> initializers.Initializer:
  """Initialiser: rows [start, start + m) of `mpt_prompt(source, task)`."""
  def init(rng, shape, context):
    del rng, context
    value = mpt_prompt(source, task, length)
    return jnp.asarray(_take_rows(value, tuple(shape), start, f"from_mpt: {source}"))
  return init


def started_from(factory: Callable[..., Any], path: str, attribute: str = "initializer",
                 start: int = 0) -> Callable[..., Any]:
  """`factory` whose `attribute` initialiser loads `path` (`from_npy`)."""
  return functools.partial(factory, **{attribute: from_npy(path, start)})


class Composed(nn.Module):
  """Several methods side by side; their hooks merged (`Hooks.merge`).

  Attributes:
    spec: the backbone's hook spec, passed to every part.
    parts: method factories (`factory(spec=...)`, e.g. gin's
      `@prompt_tuning.SoftPrompt` or `functools.partial(ia3.IA3)`).
    names: a name per part (its parameter subtree); default part_0, ...
  `inputs` hooks of one stack chain in order (part 0 first); any other site
  set by two parts is an error. Auxiliary losses of every part are kept.
  """
  spec: hooks_lib.HookSpec
  parts: Sequence[Callable[..., Any]] = ()
  names: Sequence[str] = ()

  @nn.compact
  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    if not self.parts:
      raise ValueError("Composed.parts is empty; give at least one method factory.")
    names = list(self.names) or [f"part_{i}" for i in range(len(self.parts))]
    if len(names) != len(self.parts) or len(set(names)) != len(names):
      raise ValueError(f"Composed.names={list(self.names)} must be {len(self.parts)} "
                       "distinct names, one per part.")
    merged = hooks_lib.NO_HOOKS
    for name, factory in zip(names, self.parts):
      part = factory(spec=self.spec, name=name)
      hooks = part(batch_size, context, deterministic, batch)
      try:
        merged = merged.merge(hooks)
      except ValueError as e:
        raise ValueError(f"Composed part {name!r}: {e}") from None
    return merged


def _rebuilt(module: nn.Module, spec: Any, name: Optional[str] = None,
             **unused) -> nn.Module:
  """A fresh copy of unbound `module` (same attributes), made where it is
  called so that Flax adopts it as a submodule named `name`."""
  del spec, unused  # the folded module keeps its own
  fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.init and f.name not in ("parent", "name")}
  return type(module)(**fields, name=name)


def fold(method: Composed, params: Mapping[str, Any]) -> tuple[Composed, dict]:
  """Folds every part (`methods.fold`); parts without a reparameterisation
  stay as they are. Returns (a `Composed` of the folded parts, their params)."""
  from ptuning_jax import methods  # pylint: disable=g-import-not-at-top
  params = nn.meta.unbox(params)
  names = list(method.names) or [f"part_{i}" for i in range(len(method.parts))]
  parts, folded_params = [], {}
  for name, factory in zip(names, method.parts):
    part = factory(spec=method.spec)
    folded, folded_params[name] = methods.fold(part, params[name])
    parts.append(functools.partial(_rebuilt, folded))
  return Composed(method.spec, parts=tuple(parts), names=tuple(names)), folded_params
