"""The one place where logical axis names meet the device mesh.

Modules annotate parameters and activations with *logical* axis names only
(`nn.with_logical_partitioning`, `nn.with_logical_constraint`). This module
maps them to a `(data, model)` mesh:

  * parameters: `vocab`, `mlp`, `heads` are split over `model` (tensor
    parallelism); `embed` may additionally be split over `data` (FSDP) for
    models that do not fit replicated; everything else is replicated.
  * activations (`activation_*` names): batch over `data`, MLP / heads / vocab
    over `model`.
  * prompt-method axes (`prompt`, `prompt_embed`, ...) are always replicated,
    so a prompt can always be written as one `.npy`.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

LogicalRules = Sequence[tuple[str, Optional[str | tuple[str, ...]]]]

MESH_AXES = ("data", "model")

# Axes that belong to prompt methods; always replicated.
PROMPT_AXES = (
    "prompt", "prompt_embed", "prompt_rank", "prompt_layers", "prompt_kv",
    "prompt_mlp", "tasks", "head_classes", "scale",
)


def standard_logical_axis_rules(
    fsdp: bool = False,
    additional_rules: Optional[LogicalRules] = None) -> tuple:
  """Logical -> mesh axis rules for all our models.

  Args:
    fsdp: also shard the frozen parameters' `embed` axis over `data`, so a
      large backbone (T5-XXL) is spread over every device instead of
      replicated along the data axis.
    additional_rules: appended rules; the first rule naming an axis wins, so
      these cannot override the standard ones (prepend by hand if needed).
  """
  rules = [
      # ---- parameters ----
      ("vocab", "model"),
      ("mlp", "model"),
      ("heads", "model"),
      ("kv_heads", "model"),
      ("kv", None),
      ("embed", "data" if fsdp else None),
      ("relpos_buckets", None),
      ("layers", None),
      ("classes", None),
      ("position", None),
      ("token_type", None),
      # ---- activations ----
      ("activation_batch", "data"),
      ("activation_length", None),
      ("activation_kv_length", None),
      ("activation_embed", None),
      ("activation_mlp", "model"),
      ("activation_heads", "model"),
      ("activation_kv_heads", "model"),
      ("activation_kv", None),
      ("activation_vocab", "model"),
  ]
  rules += [(axis, None) for axis in PROMPT_AXES]
  if additional_rules:
    rules += list(additional_rules)
  return tuple(rules)


def make_mesh(data: int = -1, model: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """Builds a `(data, model)` mesh; -1 in `data` takes all remaining devices.

  A single-process run may ask for fewer devices than it has (the first
  `data * model` are used); a multi-host mesh must span every device.
  """
  devices = list(jax.devices() if devices is None else devices)
  if data != -1 and data * model < len(devices) and jax.process_count() == 1:
    devices = devices[:data * model]
  if data == -1:
    if len(devices) % model:
      raise ValueError(f"{len(devices)} devices are not divisible by model={model}.")
    data = len(devices) // model
  if data * model != len(devices):
    raise ValueError(
        f"Mesh (data={data}, model={model}) needs {data * model} devices; "
        f"{len(devices)} are available.")
  return Mesh(np.asarray(devices).reshape(data, model), MESH_AXES)


def logical_specs(abstract_variables: Any) -> Any:
  """Tree of logical PartitionSpecs (axis-name tuples) from boxed variables."""
  return nn.get_partition_spec(abstract_variables)


def uncovered_axes(logical_spec_tree: Any, rules: LogicalRules) -> set[str]:
  """Logical axis names used in `logical_spec_tree` that no rule names."""
  known = {name for name, _ in rules}
  used: set[str] = set()
  for spec in jax.tree_util.tree_leaves(
      logical_spec_tree, is_leaf=lambda x: isinstance(x, PartitionSpec)):
    if isinstance(spec, PartitionSpec):
      used.update(a for a in spec if isinstance(a, str))
  return used - known


def check_rules_cover(logical_spec_tree: Any, rules: LogicalRules) -> None:
  missing = uncovered_axes(logical_spec_tree, rules)
  if missing:
    raise ValueError(f"No partitioning rule for logical axes {sorted(missing)}; "
                     "add them to partitioning.standard_logical_axis_rules.")


def mesh_shardings(logical_spec_tree: Any, mesh: Mesh,
                   rules: LogicalRules) -> Any:
  """Logical PartitionSpec tree -> NamedSharding tree on `mesh`."""
  check_rules_cover(logical_spec_tree, rules)
  return nn.logical_to_mesh_sharding(logical_spec_tree, mesh, list(rules))


def _divisible_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh,
                    name: str, dropped: list) -> PartitionSpec:
  """Drops mesh axes that do not divide their dimension (replicates it)."""
  out = []
  for dim, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    if names and shape[dim] % size:
      dropped.append(f"{name}[{dim}]={shape[dim]} over {names}")
      out.append(None)
    else:
      out.append(axes)
  return PartitionSpec(*out)


def param_shardings(abstract_variables: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """NamedShardings for boxed (logically partitioned) abstract variables.

  Like `mesh_shardings`, but a dimension whose size the mapped mesh axes do
  not divide (e.g. 3 heads over a model axis of 4) is replicated, with a
  warning, instead of failing at placement time.
  """
  specs = nn.get_partition_spec(abstract_variables)
  check_rules_cover(specs, rules)
  mesh_specs = nn.logical_to_mesh(specs, list(rules))
  shapes = nn.meta.unbox(abstract_variables)
  flat_specs, treedef = jax.tree_util.tree_flatten(
      mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  flat_shapes = treedef.flatten_up_to(shapes)
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(
               mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]]
  dropped: list[str] = []
  out = [NamedSharding(mesh, _divisible_spec(sp, x.shape, mesh, path, dropped))
         for sp, x, path in zip(flat_specs, flat_shapes, paths)]
  if dropped:
    log.warning("%d parameter dims are not divisible by their mesh axes and are "
                "replicated instead, e.g. %s", len(dropped), "; ".join(dropped[:3]))
  return jax.tree_util.tree_unflatten(treedef, out)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding for a `[B, ...]` batch array: batch over `data`."""
  return NamedSharding(mesh, PartitionSpec("data", *([None] * (ndim - 1))))


@contextlib.contextmanager
def activate(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
  """Makes `mesh` and the logical `rules` current for tracing and running.

  Logical constraints inside modules (`nn.with_logical_constraint`) resolve
  against these. Use it around every call of a jitted step.
  """
  # `jax.set_mesh` also sets the abstract mesh that sharding constraints
  # resolve against; a bare `with mesh:` leaves them silently inert.
  set_mesh = getattr(jax, "set_mesh", None)
  with (set_mesh(mesh) if set_mesh else mesh), nn.logical_axis_rules(list(rules)):
    yield
