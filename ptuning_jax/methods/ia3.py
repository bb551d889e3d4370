"""(IA)^3: learned rescaling of inner activations (Liu et al., NeurIPS 2022).

"Infused Adapter by Inhibiting and Amplifying Inner Activations" multiplies
the keys and values of every attention (encoder self-attention, decoder
self- and cross-attention) and the intermediate activation of every
feed-forward block by learned vectors, initialised to ones so training
starts from the frozen model:

  k <- l_k * k,  v <- l_v * v,  h_ff <- l_ff * act(W_i x)

(For T5 1.1's gated MLP, h_ff = gelu(x W_i0) * (x W_i1) is rescaled before
`wo`, which is PEFT's `feedforward_modules=["wo"]` placement.)

Parameters: one vector per layer and site, a submodule per stack:
  encoder/{k, v} [L_enc, N D], encoder/mlp [L_enc, F]
  decoder/{self_k, self_v, cross_k, cross_v} [L_dec, N D], decoder/mlp [L_dec, F]
Count with all sites: L_enc (2 N D + F) + L_dec (4 N D + F); T5 1.1 Base:
104,448.

Dimension letters: L layers of a stack, N heads, D head dim, F MLP dim.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import initializers
from ptuning_jax.methods import common

Array = jax.Array


def ones(rng, shape, context=None):
  del rng, context
  return jnp.ones(shape, jnp.float32)


def site_shape(config: Any, site: str) -> tuple[int, int]:
  """[L, width] of a scale site ("{stack}/{name}", see hooks.SCALE_SITES)."""
  stack, name = site.split("/")
  layers = config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers
  width = config.d_ff if name == "mlp" else config.num_heads * config.d_kv
  return layers, width


class _StackScales(nn.Module):
  """The scale vectors of one stack."""
  shapes: Mapping[str, tuple[int, int]]
  initializer: initializers.Initializer

  @nn.compact
  def __call__(self, context: initializers.InitContext) -> dict[str, Array]:
    return {name: initializers.prompt_param(self, name, self.initializer, shape, context,
                                       ("prompt_layers", "scale"))
            for name, shape in self.shapes.items()}


class IA3(nn.Module):
  """Learned activation rescaling.

  Attributes:
    backbone_config: the backbone config (layers, heads, d_kv, d_ff).
    sites: rescaled sites (subset of `hooks.SCALE_SITES`); default all.
    initializer: of every vector; default ones (the identity).
  """
  backbone_config: Any
  sites: Sequence[str] = hooks_lib.SCALE_SITES
  initializer: initializers.Initializer = ones

  @nn.compact
  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    del batch_size, deterministic, batch
    sites = tuple(self.sites)
    if not sites or len(set(sites)) != len(sites):
      raise ValueError(f"IA3.sites={sites!r} must be non-empty and unique.")
    for site in sites:
      common.check_choice("IA3", "sites", site, hooks_lib.SCALE_SITES)
    scales = {}
    for stack in ("encoder", "decoder"):
      shapes = {s.split("/")[1]: site_shape(self.backbone_config, s)
                for s in sites if s.startswith(stack + "/")}
      if shapes:
        values = _StackScales(shapes, self.initializer, name=stack)(context)
        scales.update({f"{stack}/{k}": v for k, v in values.items()})
    return hooks_lib.Hooks(scales=scales)


def num_params(config: Any, sites: Sequence[str] = hooks_lib.SCALE_SITES) -> int:
  """The formula: sum over sites of L * (N D or F)."""
  total = 0
  for site in sites:
    layers, width = site_shape(config, site)
    total += layers * width
  return total
