"""Frozen backbones: load a checkpoint directory (or build a random one) onto a mesh.

A backbone is a `t5.T5` module plus its parameters, placed with the
shardings that `partitioning` derives from the module's logical axes. Loading
is strict: every parameter must come from the checkpoint (see
`hf_checkpoints`); a missing tensor is an error, never a random init.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptuning_jax.backbones.hf import t5 as hf_t5
from ptuning_jax.training import partitioning
from ptuning_jax.backbones import t5


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """Where the frozen weights come from.

  Attributes:
    checkpoint_dir: a Hugging Face layout directory (`config.json` +
      `model.safetensors` or a sharded index). Required unless `config` is
      given for a randomly initialised backbone (tests, benchmarks).
    config: a `t5.T5Config` for a random backbone.
    seed: seed of the random backbone.
    dtype: activation dtype override ("float32", "bfloat16").
    param_dtype: dtype the frozen weights are stored in on device.
    dropout_rate: override of the checkpoint's dropout rate.
    remat_policy: override of the rematerialisation policy.
  """
  checkpoint_dir: Optional[str] = None
  config: Optional[t5.T5Config] = None
  seed: int = 0
  dtype: Optional[str] = None
  param_dtype: Optional[str] = None
  dropout_rate: Optional[float] = None
  remat_policy: Optional[str] = None

  def __post_init__(self):
    if (self.checkpoint_dir is None) == (self.config is None):
      raise ValueError("BackboneSpec needs exactly one of checkpoint_dir (a "
                       "checkpoint to load) or config (a random backbone).")


@dataclasses.dataclass
class Backbone:
  module: t5.T5
  params: Any
  shardings: Any

  @property
  def config(self) -> t5.T5Config:
    return self.module.config

  @property
  def embedding(self) -> jax.Array:
    return self.params["token_embedder"]["embedding"]


def _resolve_config(spec: BackboneSpec) -> t5.T5Config:
  config = spec.config or hf_t5.load_config(spec.checkpoint_dir)
  overrides = {k: getattr(spec, k) for k in
               ("dtype", "param_dtype", "dropout_rate", "remat_policy")
               if getattr(spec, k) is not None}
  return dataclasses.replace(config, **overrides)


def _boxed_shapes(module: t5.T5) -> Any:
  """The params' shapes and dtypes with their logical-axis boxes (no weights)."""
  dummy = jnp.ones((1, 1), jnp.int32)
  return jax.eval_shape(lambda: module.init(jax.random.key(0), dummy, dummy)["params"])


def frozen_shardings(module: t5.T5, mesh, rules) -> Any:
  """NamedSharding tree of the backbone's params from their logical axes."""
  return partitioning.param_shardings(_boxed_shapes(module), mesh, rules)


def abstract(config: t5.T5Config, mesh, rules) -> Backbone:
  """The backbone with `jax.ShapeDtypeStruct` params (shape, dtype and
  sharding; no weights are made): for tracing and lowering a step of a
  model that need not fit this machine (e.g. `bench --lower_only`)."""
  module = t5.T5(config)
  boxed = _boxed_shapes(module)
  shardings = partitioning.param_shardings(boxed, mesh, rules)
  params = jax.tree_util.tree_map(
      lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      nn.meta.unbox(boxed), shardings)
  return Backbone(module=module, params=params, shardings=shardings)


def load(spec: BackboneSpec, mesh, rules) -> Backbone:
  """Builds the module and places its frozen params on `mesh`."""
  config = _resolve_config(spec)
  module = t5.T5(config)
  shardings = frozen_shardings(module, mesh, rules)
  if spec.checkpoint_dir is not None:
    params = hf_t5.load_params(spec.checkpoint_dir, config, mesh=mesh,
                                        rules=rules)
  else:
    dummy = jnp.ones((1, 1), jnp.int32)
    init = jax.jit(lambda r: nn.meta.unbox(module.init(r, dummy, dummy)["params"]),
                   out_shardings=shardings)
    with partitioning.activate(mesh, rules):
      params = init(jax.random.key(spec.seed))
  return Backbone(module=module, params=params, shardings=shardings)
