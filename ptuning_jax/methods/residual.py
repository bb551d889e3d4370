"""Residual prompt tuning (Razdaibiedina et al., Findings ACL 2023).

Each prompt vector is passed through a shallow MLP with a skip connection,

  P'_i = P_i + LN(W_up act(W_down P_i + b_down) + b_up),

shared across the P tokens and trained jointly with P (the official
`ResMLP`: Linear(H, M) - act - Linear(M, H) - [dropout] - [LayerNorm(H)],
plus the input). After training the reparameterisation is dropped: `fold`
precomputes P' into a plain `prompt_tuning.SoftPrompt` with identical outputs.

Trainable parameters: P H + H M + M + M H + H (+ 2 H with the LayerNorm).
T5-Large, P = 100, M = 400: 925,072 (the 925K of DPT's Figure 1).

Dimension letters: B batch, P prompt length, H embed width, M bottleneck.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import initializers
from ptuning_jax.methods import placements
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.methods import common

Array = jax.Array
Params = Any

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid}
# torch.nn.LayerNorm's default epsilon.
LAYER_NORM_EPSILON = 1e-5


class ResidualMLP(nn.Module):
  """The reparameterisation P -> P + LN(W_up act(W_down P)).

  Attributes:
    bottleneck: M.
    activation: key of ACTIVATIONS.
    layer_norm: apply LayerNorm (with scale and bias) to the MLP output.
    dropout_rate: dropout on the MLP output (before the LayerNorm).
  """
  bottleneck: int
  activation: str = "relu"
  layer_norm: bool = True
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, prompt: Array, deterministic: bool = True) -> Array:
    """prompt: [P, H] -> [P, H] float32."""
    embed = prompt.shape[-1]
    h = ACTIVATIONS[self.activation](common.Dense(self.bottleneck, name="down")(prompt))
    h = common.Dense(embed, kernel_axes=("prompt_mlp", "prompt_embed"), name="up")(h)
    h = nn.Dropout(rate=self.dropout_rate)(h, deterministic=deterministic)
    if self.layer_norm:
      h = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=jnp.float32,
                       scale_init=nn.with_logical_partitioning(
                           nn.initializers.ones, ("prompt_embed",)),
                       bias_init=nn.with_logical_partitioning(
                           nn.initializers.zeros, ("prompt_embed",)),
                       name="layer_norm")(h)
    return prompt.astype(jnp.float32) + h  # [P, H]


class ResidualPrompt(nn.Module):
  """A soft prompt reparameterised by a residual MLP.

  Attributes:
    spec: the backbone's hook spec (`embed_dim` H).
    length: P (the repository's T5-Base example uses 10).
    bottleneck: M.
    activation: "relu" (default), "tanh" or "sigmoid".
    layer_norm: LayerNorm on the MLP branch (the paper's form).
    dropout_rate: dropout on the MLP branch.
    initializer: of P (default sampled vocabulary, as the repository).
    placement: prompt placement (`placements.PLACEMENTS`).
  """
  spec: hooks_lib.HookSpec
  length: int = 10
  bottleneck: int = 400
  activation: str = "relu"
  layer_norm: bool = True
  dropout_rate: float = 0.0
  initializer: initializers.Initializer = dataclasses.field(
      default_factory=initializers.sampled_vocab)
  placement: str = "prefix"

  @nn.compact
  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    del batch, batch_size
    common.check_positive("ResidualPrompt", length=self.length,
                          bottleneck=self.bottleneck)
    common.check_choice("ResidualPrompt", "activation", self.activation, ACTIVATIONS)
    raw = initializers.prompt_param(self, "prompt", self.initializer,
                               (self.length, self.spec.embed_dim), context)
    prompt = self._mlp()(raw, deterministic)  # [P, H]
    return common.prompt_hooks(self.spec, prompt, self.placement)

  def _mlp(self) -> ResidualMLP:
    return ResidualMLP(self.bottleneck, self.activation, self.layer_norm,
                       self.dropout_rate, name="mlp")


def fold(method: ResidualPrompt, params: Params) -> tuple[prompt_tuning.SoftPrompt, Params]:
  """(a `SoftPrompt` with the same placement, {"prompt": P'}), P' computed once."""
  params = nn.meta.unbox(params)
  mlp = ResidualMLP(method.bottleneck, method.activation, method.layer_norm,
                    method.dropout_rate)
  prompt = mlp.apply({"params": params["mlp"]}, params["prompt"], True)
  folded = prompt_tuning.SoftPrompt(spec=method.spec,
                              length=method.length, placement=method.placement,
                              initializer=initializers.normal())
  return folded, {"prompt": prompt}


def num_params(d_model: int, length: int, bottleneck: int,
               layer_norm: bool = True) -> int:
  """The formula P H + H M + M + M H + H (+ 2 H)."""
  h, m = d_model, bottleneck
  return length * h + h * m + m + m * h + h + (2 * h if layer_norm else 0)
