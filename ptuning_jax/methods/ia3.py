"""(IA)^3: learned rescaling of inner activations (Liu et al., NeurIPS 2022).

"Infused Adapter by Inhibiting and Amplifying Inner Activations" multiplies
the keys and values of every attention site and the intermediate activation
of every feed-forward block by learned vectors, initialised to ones so
training starts from the frozen model:

  k <- l_k * k,  v <- l_v * v,  h_ff <- l_ff * act(W_i x)

(For T5 1.1's gated MLP, h_ff = gelu(x W_i0) * (x W_i1) is rescaled before
`wo`, which is PEFT's `feedforward_modules=["wo"]` placement.)

The sites are the backbone's scale sites (`HookSpec.scale_sites`):
"{stack}/{self|cross}/{k|v}" and "{stack}/mlp". Parameters: one vector per
layer and site, a submodule per stack, named by the site within the stack:
  T5:   encoder/{self_k, self_v} [L_enc, K D], encoder/mlp [L_enc, F],
        decoder/{self_k, self_v, cross_k, cross_v} [L_dec, K D], decoder/mlp [L_dec, F]
  BERT: encoder/{self_k, self_v} [L, K D], encoder/mlp [L, F]
Count with all T5 sites: L_enc (2 K D + F) + L_dec (4 K D + F); T5 1.1 Base:
104,448.

Dimension letters: L layers of a stack, K key/value heads, D head dim, F MLP
dim.
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


def param_name(site: str) -> tuple[str, str]:
  """(stack, parameter name) of a scale site: "decoder/cross/k" ->
  ("decoder", "cross_k"), "encoder/mlp" -> ("encoder", "mlp")."""
  stack, _, rest = site.partition("/")
  return stack, rest.replace("/", "_")


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
    spec: the backbone's hook spec (its scale sites and their shapes).
    sites: rescaled sites (subset of `spec.scale_sites`); None: all.
    initializer: of every vector; default ones (the identity).
  """
  spec: hooks_lib.HookSpec
  sites: Optional[Sequence[str]] = None
  initializer: initializers.Initializer = ones

  def resolved_sites(self) -> tuple[str, ...]:
    sites = tuple(self.spec.scale_sites if self.sites is None else self.sites)
    if not sites or len(set(sites)) != len(sites):
      raise ValueError(f"IA3.sites={sites!r} must be non-empty and unique.")
    for site in sites:
      common.check_choice("IA3", "sites", site, self.spec.scale_sites)
    return sites

  @nn.compact
  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    del batch_size, deterministic, batch
    sites = self.resolved_sites()
    scales = {}
    for stack in dict.fromkeys(param_name(s)[0] for s in sites):
      names = {param_name(s)[1]: s for s in sites if param_name(s)[0] == stack}
      values = _StackScales({n: self.spec.scale_shape(s) for n, s in names.items()},
                            self.initializer, name=stack)(context)
      scales.update({names[n]: v for n, v in values.items()})
    return hooks_lib.Hooks(scales=scales)


def num_params(spec: hooks_lib.HookSpec, sites: Optional[Sequence[str]] = None) -> int:
  """The formula: sum over sites of L * (K D or F)."""
  total = 0
  for site in (spec.scale_sites if sites is None else sites):
    layers, width = spec.scale_shape(site)
    total += layers * width
  return total
