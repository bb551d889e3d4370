"""LoPT-2 (Guo, Damani and Chang, 2024): a nonlinear low-rank prompt.

LoPT's second variant maps a fixed prompt-shaped matrix X0 through a
rank-r bottleneck:

  prompt = act(X0 @ U) @ V,   X0: [P, H] fixed, U: [H, r], V: [r, H],

so 2 r H numbers train, independent of the prompt length P (the paper's
"2rd"). LoPT's first variant, X = U V, is `low_rank.LowRankPrompt`.

X0 is not a parameter: it is regenerated inside the step from `x0_seed`
(N(0, 1) entries; XLA folds it into a constant), so it costs no optimizer
state, no checkpoint space and no host memory. U starts N(0, 1 / H), so
X0 @ U has unit-variance entries. V is fitted by least squares ("fit",
default): act(X0 U) V starts as the best approximation, in V's span, of an
ordinary initial prompt (default sampled vocabulary), like the SVD start of
`low_rank`; "random" draws V from `v_initializer`.

Not confirmed from the paper text (only its abstract was readable here): the
activation (`activation`, default "sigmoid", the usual reading of sigma),
how X0 is made, and the initialisation of U and V. The paper reports its
best results near P = 20 with r between 2 and 5 (secondary source).

`fold` turns it into a plain `prompt_tuning.SoftPrompt` holding the prompt.

Dimension letters: B batch, P prompt length, r rank, H embed width.
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

ACTIVATIONS = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu,
               "gelu": jax.nn.gelu}
INITS = ("fit", "random")
U_AXES = ("prompt_embed", "prompt_rank")
V_AXES = ("prompt_rank", "prompt_embed")


def fixed_input(seed: int, length: int, d_model: int) -> Array:
  """X0 [P, H]: N(0, 1) entries from `seed` (the same on every call)."""
  return jax.random.normal(jax.random.key(seed), (length, d_model), jnp.float32)


def lopt_prompt(x0: Array, u: Array, v: Array, activation: str) -> Array:
  """act(X0 [P, H] @ U [H, r]) @ V [r, H] -> [P, H] float32."""
  hidden = ACTIVATIONS[activation](jnp.dot(x0, u.astype(jnp.float32)))  # [P, r]
  return jnp.dot(hidden, v.astype(jnp.float32))


class LoPT2Prompt(nn.Module):
  """A soft prompt act(X0 U) V with a fixed X0.

  Attributes:
    spec: the backbone's hook spec (`embed_dim` H).
    length: P.
    rank: r.
    activation: one of ACTIVATIONS.
    x0_seed: seed of the fixed X0.
    init_mode: "fit" (V fitted to `initializer`'s prompt) or "random".
    initializer: the prompt V is fitted to ("fit").
    v_initializer: V's initialiser ("random").
    placement: prompt placement (`placements.PLACEMENTS`).
  """
  spec: hooks_lib.HookSpec
  length: int = 20
  rank: int = 4
  activation: str = "sigmoid"
  x0_seed: int = 0
  init_mode: str = "fit"
  initializer: initializers.Initializer = dataclasses.field(
      default_factory=initializers.sampled_vocab)
  v_initializer: initializers.Initializer = dataclasses.field(
      default_factory=lambda: initializers.normal(0.1))
  placement: str = "prefix"

  def _check(self):
    common.check_positive("LoPT2Prompt", length=self.length, rank=self.rank)
    common.check_choice("LoPT2Prompt", "activation", self.activation, tuple(ACTIVATIONS))
    common.check_choice("LoPT2Prompt", "init_mode", self.init_mode, INITS)
    if self.rank > self.spec.embed_dim:
      raise ValueError(f"LoPT2Prompt.rank={self.rank} exceeds the embed width "
                       f"{self.spec.embed_dim}.")

  def _factors(self, x0: Array, context: initializers.InitContext) -> tuple[Array, Array]:
    h = self.spec.embed_dim
    shape_u, shape_v = (h, self.rank), (self.rank, h)

    def joint(rng):
      rng_u, rng_v = jax.random.split(rng)
      u = jax.random.normal(rng_u, shape_u, jnp.float32) / jnp.sqrt(h)
      if self.init_mode == "random":
        return {"lopt_u": u, "lopt_v": self.v_initializer(rng_v, shape_v, context)}
      target = self.initializer(rng_v, (self.length, h), context)  # [P, H]
      hidden = ACTIVATIONS[self.activation](x0 @ u)  # [P, r]
      v = jnp.linalg.lstsq(hidden, target.astype(jnp.float32))[0]  # [r, H]
      return {"lopt_u": u, "lopt_v": v}
    values = common.joint_params(
        self, {"lopt_u": (shape_u, U_AXES), "lopt_v": (shape_v, V_AXES)}, joint)
    return values["lopt_u"], values["lopt_v"]

  @nn.compact
  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    del deterministic, batch, batch_size
    self._check()
    x0 = fixed_input(self.x0_seed, self.length, self.spec.embed_dim)
    u, v = self._factors(x0, context)
    prompt = lopt_prompt(x0, u, v, self.activation)  # [P, H]
    return common.prompt_hooks(self.spec, prompt, self.placement)


def fold(method: LoPT2Prompt, params: Params) -> tuple[prompt_tuning.SoftPrompt, Params]:
  """(a `SoftPrompt` with the same placement, {"prompt": act(X0 U) V})."""
  params = nn.meta.unbox(params)
  x0 = fixed_input(method.x0_seed, method.length, method.spec.embed_dim)
  prompt = lopt_prompt(x0, params["lopt_u"], params["lopt_v"], method.activation)
  folded = prompt_tuning.SoftPrompt(spec=method.spec,
                              length=method.length, placement=method.placement,
                              initializer=initializers.normal())
  return folded, {"prompt": prompt}


def num_params(d_model: int, rank: int) -> int:
  """The formula 2 r H."""
  return 2 * rank * d_model
