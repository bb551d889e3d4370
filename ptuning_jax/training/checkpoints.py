"""Checkpoints of the *trainable* state (never the frozen backbone), via orbax.

Layout under `directory`:

  <directory>/<step>/state/     the state pytree (StandardSave): step,
                                trainable params, optimizer state, rng.
  <directory>/<step>/data/      JSON: the input pipeline position.
  <directory>/<step>/metrics/   JSON: metrics given to `save` (orbax's item).
  <directory>/numpy/<step>/<a.b.c>.npy
                                every exported trainable leaf as .npy (like
                                prompt-tuning's numpy checkpoints); these are
                                tiny and never deleted by retention. bfloat16
                                leaves are written as float32 (exactly). A
                                task model's method parameters are named
                                within the method (`prompt.npy`), a head's
                                as `head.<...>.npy`; a fully fine-tuned
                                backbone is not exported here.

Dimension letters: P prompt length, H d_model.

Retention keeps the `keep` most recent steps, plus the single best step by
`keep_best` when that is set (orbax `LatestN` or `BestN(n=1)`).
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import re
from typing import Any, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from ptuning_jax.training.optimizers import path_str

STATE, DATA = "state", "data"
NUMPY_DIR = "numpy"


def _metric_getter(name: str, mode: str):
  """metrics dict -> float; a step without the metric ranks worst."""
  worst = -math.inf if mode == "max" else math.inf

  def get(metrics: Any) -> float:
    if not isinstance(metrics, dict) or name not in metrics:
      return worst
    return float(metrics[name])

  return get


def _abstract_leaf(path: tuple, x: Any) -> Any:
  """A restore target leaf: shape, dtype and sharding of `x`."""
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
    raise ValueError(
        f"Restore target leaf {path_str(path)!r} is a ShapeDtypeStruct without "
        "a sharding; give one (e.g. NamedSharding(mesh, PartitionSpec())) so "
        "the restored array is placed, or pass a numpy array for host data.")
  return x


class Checkpointer:
  """Saves and restores the trainable train state, data position and metrics.

  Call every method on all processes (orbax synchronises them); only
  process 0 writes the `.npy` exports.

  Args:
    directory: root directory of this run's checkpoints.
    keep: number of most recent steps to keep (None keeps all).
    keep_best: also keep the best step by this metric (a key of the
      `metrics` given to `save`); None tracks no metric.
    best_mode: "max" or "min" for `keep_best`.
    export_npy: write the exported leaves as `.npy` at every save.
    npy_subtree: attribute or key of the state holding the trainable params;
      `.npy` names are paths inside it joined with '.', without a leading
      `npy_strip` key; paths under an `npy_skip` key are not exported.
    npy_patterns: regexes `re.search`ed in '/'-joined paths inside
      `npy_subtree`; a leaf is exported if any matches. Empty: all leaves.
    async_save: let orbax write the state in a background thread (`wait()`
      blocks until it is done).
  """

  def __init__(self, directory: str | os.PathLike, keep: Optional[int] = 1,
               keep_best: Optional[str] = None, best_mode: str = "max",
               export_npy: bool = True, npy_subtree: str = "params",
               npy_patterns: Sequence[str] = (), async_save: bool = True,
               npy_strip: Sequence[str] = ("method",),
               npy_skip: Sequence[str] = ("backbone",)):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode={best_mode!r}; expected 'max' or 'min'.")
    if keep is not None and keep < 1:
      raise ValueError(f"keep={keep} must be >= 1 or None.")
    self.directory = pathlib.Path(directory).absolute()
    self.keep_best, self.best_mode = keep_best, best_mode
    self.export_npy = export_npy
    self.npy_subtree = npy_subtree
    self.npy_strip, self.npy_skip = tuple(npy_strip), tuple(npy_skip)
    self.npy_patterns = tuple(re.compile(p) for p in npy_patterns)
    policies = [pp.LatestN(n=keep)]
    if keep_best is not None:
      policies.append(pp.BestN(
          get_metric_fn=_metric_getter(keep_best, best_mode),
          reverse=best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    # `best_fn` is set in every case: orbax writes the `metrics` item only when
    # it "tracks best". Retention is the explicit preservation policy.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies),
        best_fn=_metric_getter(keep_best or "", best_mode),
        best_mode=best_mode, enable_async_checkpointing=async_save,
        create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=(STATE, DATA))

  # ------------------------------------------------------------------ save

  def save(self, step: int, state: Any, data_state: dict,
           metrics: Optional[dict] = None, force: bool = False) -> bool:
    """Saves `state` (any pytree) at `step`; returns whether it saved.

    A step at or below the latest saved step is skipped (False) unless
    `force`, which still never overwrites an existing step.
    """
    step = int(step)
    if not force and not self._manager.should_save(step):
      return False
    if step in self._manager.all_steps():
      raise ValueError(f"Checkpoint step {step} already exists in "
                       f"{self.directory}; steps are never overwritten.")
    metrics = {k: _json_scalar(k, v) for k, v in (metrics or {}).items()}
    try:
      json.dumps(data_state)
    except TypeError as e:
      raise TypeError(f"Checkpointer.save(step={step}): data_state is not "
                      f"JSON-serialisable: {e}") from e
    saved = self._manager.save(
        step,
        args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                   DATA: ocp.args.JsonSave(dict(data_state))}),
        metrics=metrics, force=force)
    if saved and self.export_npy:
      self._export_npy(step, state)
    return saved

  def npy_dir(self, step: int) -> pathlib.Path:
    """Directory of the `.npy` exports of `step`."""
    return self.directory / NUMPY_DIR / str(int(step))

  def _npy_leaves(self, state: Any) -> list[tuple[str, Any]]:
    if isinstance(state, dict):
      found = self.npy_subtree in state
      subtree = state.get(self.npy_subtree)
      have = sorted(map(str, state))
    else:
      found = hasattr(state, self.npy_subtree)
      subtree = getattr(state, self.npy_subtree, None)
      have = sorted(getattr(state, "__dataclass_fields__", {}))
    if not found:
      raise ValueError(f"Checkpointer(npy_subtree={self.npy_subtree!r}): the "
                       f"state has no such field; it has {have}.")
    leaves = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(subtree):
      first = path_str(path[:1])
      if first in self.npy_skip:
        continue
      if first in self.npy_strip:
        path = path[1:]
      slash = path_str(path)
      if (not self.npy_patterns or
          any(p.search(slash) for p in self.npy_patterns)):
        leaves.append((path_str(path, "."), leaf))
    return leaves

  def _export_npy(self, step: int, state: Any) -> None:
    """Writes the exported leaves of `state` as `.npy` (process 0 only)."""
    values = []
    for name, leaf in self._npy_leaves(state):
      if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = multihost_utils.process_allgather(leaf, tiled=True)  # collective
      values.append((name, _portable(np.asarray(leaf))))
    if jax.process_index() != 0:
      return
    out = self.npy_dir(step)
    out.mkdir(parents=True, exist_ok=True)
    for name, value in values:
      tmp = out / f"{name}.tmp.npy"
      np.save(tmp, value, allow_pickle=False)
      tmp.replace(out / f"{name}.npy")  # atomic: a reader never sees half.

  # --------------------------------------------------------------- restore

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore(self, step: Optional[int] = None, target_state: Any = None
              ) -> tuple[Any, dict]:
    """Restores (state, data_state) at `step` (default: latest).

    Args:
      step: the step to restore; None for the latest.
      target_state: a pytree like the saved state whose leaves give each
        restored leaf's shape, dtype and sharding: jax arrays or
        `jax.ShapeDtypeStruct(..., sharding=...)` (restored as jax arrays
        placed with that sharding), or numpy arrays / Python scalars.

    Raises:
      FileNotFoundError: `step` (or any step) is missing; names the
        directory and the available steps.
      ValueError: a target leaf's shape disagrees with the saved one.
    """
    if target_state is None:
      raise ValueError("Checkpointer.restore needs target_state (the state "
                       "pytree whose shapes, dtypes and shardings to restore "
                       "onto).")
    steps = self.all_steps()
    if step is None:
      step = steps[-1] if steps else None
    if step is None or int(step) not in steps:
      raise FileNotFoundError(
          f"No checkpoint for step {step} in {self.directory}; available "
          f"steps: {steps}.")
    step = int(step)
    target = jax.tree_util.tree_map_with_path(_abstract_leaf, target_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(target),
        DATA: ocp.args.JsonRestore()}))
    return restored[STATE], restored[DATA]

  def metrics(self, step: int) -> Optional[dict]:
    """Metrics saved with `step` ({} if none were given)."""
    return self._manager.metrics(int(step))

  def best_step(self) -> Optional[int]:
    """Kept step with the best `keep_best` metric; None if none has it."""
    if self.keep_best is None:
      raise ValueError("Checkpointer.best_step needs keep_best=<metric name>.")
    return self._manager.best_step()

  # ------------------------------------------------------------- lifecycle

  def wait(self) -> None:
    """Blocks until pending (async) saves and deletions are done."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _json_scalar(name: str, value: Any) -> float | int | str | bool:
  """A metric value as a JSON scalar (numpy / jax scalars -> float/int)."""
  if isinstance(value, (bool, int, float, str)):
    return value
  array = np.asarray(value)
  if array.ndim:
    raise ValueError(f"Checkpoint metric {name!r} has shape {array.shape}; "
                     "only scalars can be saved with a checkpoint.")
  return array.item()


def _portable(value: np.ndarray) -> np.ndarray:
  """ml_dtypes (bfloat16, float8: no .npy type) -> float32, exactly."""
  if value.dtype.kind == "V":
    return value.astype(np.float32)
  return value


def load_npy(path: str | os.PathLike,
             dtype: Optional[Any] = None) -> np.ndarray:
  """Loads one exported leaf, e.g. `<dir>/numpy/<step>/encoder.prompt.npy`.

  Args:
    path: the `.npy` file.
    dtype: cast to this dtype. bfloat16 leaves are exported as float32 (exact,
      readable anywhere); `dtype=jnp.bfloat16` gives back the identical bits.
  """
  path = pathlib.Path(path)
  if not path.exists():
    siblings = sorted(p.name for p in path.parent.glob("*.npy")) if (
        path.parent.is_dir()) else []
    raise FileNotFoundError(f"No .npy export at {path}; that directory has "
                            f"{siblings}.")
  value = np.load(path, allow_pickle=False)
  return value if dtype is None else value.astype(dtype)
