"""Frozen backbones: load a checkpoint directory (or build a random one) onto a mesh.

A backbone is a registered family's module plus its parameters, placed with
the shardings that `partitioning` derives from the module's logical axes.
Loading is strict: every parameter must come from the checkpoint (see
`backbones/hf/`); a missing tensor is an error, never a random init. The
family comes from the checkpoint's `config.json` (`model_type`), or from the
config dataclass of a random backbone.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.backbones import registry
from ptuning_jax.training import partitioning

# Run-level overrides a BackboneSpec may apply to any family's config.
OVERRIDES = ("dtype", "param_dtype", "dropout_rate", "remat_policy")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """Where the frozen weights come from.

  Attributes:
    checkpoint_dir: a Hugging Face layout directory (`config.json` +
      `model.safetensors` or a sharded index) of any registered family.
      Required unless `config` is given for a randomly initialised backbone
      (tests, benchmarks, the demo's pretraining).
    config: a family config (`t5.T5Config`, `bert.BertConfig`, ...) for a
      random backbone.
    seed: seed of the random backbone.
    dtype: activation dtype override ("float32", "bfloat16").
    param_dtype: dtype the frozen weights are stored in on device.
    dropout_rate: override of the checkpoint's dropout rate(s).
    remat_policy: override of the rematerialisation policy.
  """
  checkpoint_dir: Optional[str] = None
  config: Any = None
  seed: int = 0
  dtype: Optional[str] = None
  param_dtype: Optional[str] = None
  dropout_rate: Optional[float] = None
  remat_policy: Optional[str] = None

  def __post_init__(self):
    if (self.checkpoint_dir is None) == (self.config is None):
      raise ValueError("BackboneSpec needs exactly one of checkpoint_dir (a "
                       "checkpoint to load) or config (a random backbone).")

  @property
  def family(self) -> registry.Family:
    if self.config is not None:
      return registry.for_config(self.config)
    return registry.for_checkpoint(self.checkpoint_dir)

  def resolve_config(self) -> Any:
    """The config with this spec's overrides applied."""
    family = self.family
    config = self.config or family.load_config(self.checkpoint_dir)
    overrides = {k: getattr(self, k) for k in OVERRIDES if getattr(self, k) is not None}
    return family.override(config, **overrides) if overrides else config


@dataclasses.dataclass
class Backbone:
  """A family's module, its (frozen) parameters and their shardings."""
  family: registry.Family
  module: nn.Module
  params: Any
  shardings: Any

  @property
  def config(self) -> Any:
    return self.module.config

  @property
  def spec(self) -> hooks_lib.HookSpec:
    return self.family.hook_spec(self.config)

  @property
  def embedding(self) -> jax.Array:
    return self.family.embedding(self.params)


def _boxed_shapes(family: registry.Family, module: nn.Module) -> Any:
  """The params' shapes and dtypes with their logical-axis boxes (no weights)."""
  args = family.init_args(module.config)
  return jax.eval_shape(lambda: module.init(jax.random.key(0), *args)["params"])


def frozen_shardings(family: registry.Family, module: nn.Module, mesh, rules) -> Any:
  """NamedSharding tree of the backbone's params from their logical axes."""
  return partitioning.param_shardings(_boxed_shapes(family, module), mesh, rules)


def abstract(config: Any, mesh, rules) -> Backbone:
  """The backbone with `jax.ShapeDtypeStruct` params (shape, dtype and
  sharding; no weights are made): for tracing and lowering a step of a
  model that need not fit this machine (e.g. `bench --lower_only`)."""
  family = registry.for_config(config)
  module = family.module(config)
  boxed = _boxed_shapes(family, module)
  shardings = partitioning.param_shardings(boxed, mesh, rules)
  params = jax.tree_util.tree_map(
      lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      nn.meta.unbox(boxed), shardings)
  return Backbone(family, module, params, shardings)


def load(spec: BackboneSpec, mesh, rules) -> Backbone:
  """Builds the module and places its frozen params on `mesh`."""
  family = spec.family
  config = spec.resolve_config()
  module = family.module(config)
  shardings = frozen_shardings(family, module, mesh, rules)
  if spec.checkpoint_dir is not None:
    params = family.load_params(spec.checkpoint_dir, config, mesh=mesh, rules=rules)
  else:
    args = family.init_args(config)
    init = jax.jit(lambda r: nn.meta.unbox(module.init(r, *args)["params"]),
                   out_shardings=shardings)
    with partitioning.activate(mesh, rules):
      params = init(jax.random.key(spec.seed))
  return Backbone(family, module, params, shardings)
