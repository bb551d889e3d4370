"""Low-rank prompts: DPT (Xiao et al., Findings EMNLP 2023) / LoPT-1.

The soft prompt is the product of two small matrices,

  prompt = A @ B,   A: [P, b], B: [b, H],   b << min(P, H),

so b (P + H) numbers train instead of P H (T5-Large, P = 100, b = 10:
11,240 vs 102,400; DPT's Figure 1). This is DPT's decomposition and LoPT's
first variant (Guo et al., 2024, X = U V); LoPT's second variant
(X = act(X0 U) V) is `lopt.LoPT2Prompt`.

Initialisation ("svd", default): the rank-b truncated SVD of an ordinary
initial prompt (default sampled vocabulary), A = U_b sqrt(S_b),
B = sqrt(S_b) V_b^T, so the product starts as the best rank-b approximation
of that prompt. ("random": A and B from their own initialisers.) DPT's exact
initialisation is not confirmed from the paper text; this is our choice.

`fold` turns the factors into a plain `prompt_tuning.SoftPrompt` holding A @ B.

Dimension letters: B batch, P prompt length, b rank, H embed width.
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

INITS = ("svd", "random")
A_AXES = ("prompt", "prompt_rank")
B_AXES = ("prompt_rank", "prompt_embed")


def svd_factors(prompt: Array, rank: int) -> tuple[Array, Array]:
  """prompt [P, H] -> (A [P, b], B [b, H]) with A @ B its best rank-b approximation."""
  u, s, vt = jnp.linalg.svd(prompt.astype(jnp.float32), full_matrices=False)
  root = jnp.sqrt(s[:rank])
  return u[:, :rank] * root[None], root[:, None] * vt[:rank]


class LowRankPrompt(nn.Module):
  """A soft prompt parameterised as A @ B.

  Attributes:
    spec: the backbone's hook spec (`embed_dim` H).
    length: P.
    rank: b.
    init_mode: "svd" (factors of `initializer`'s prompt) or "random".
    initializer: the prompt whose SVD initialises the factors ("svd").
    a_initializer: A's initialiser ("random").
    b_initializer: B's initialiser ("random").
    placement: prompt placement (`placements.PLACEMENTS`).
  """
  spec: hooks_lib.HookSpec
  length: int = 100
  rank: int = 10
  init_mode: str = "svd"
  initializer: initializers.Initializer = dataclasses.field(
      default_factory=initializers.sampled_vocab)
  a_initializer: initializers.Initializer = dataclasses.field(
      default_factory=lambda: initializers.normal(1.0))
  b_initializer: initializers.Initializer = dataclasses.field(
      default_factory=lambda: initializers.normal(0.1))
  placement: str = "prefix"

  def _factors(self, context: initializers.InitContext) -> tuple[Array, Array]:
    shape_a = (self.length, self.rank)
    shape_b = (self.rank, self.spec.embed_dim)
    if self.init_mode == "random":
      a = initializers.prompt_param(self, "low_rank_a", self.a_initializer, shape_a,
                               context, A_AXES)
      b = initializers.prompt_param(self, "low_rank_b", self.b_initializer, shape_b,
                               context, B_AXES)
      return a, b

    def joint(rng):
      full = self.initializer(rng, (self.length, self.spec.embed_dim),
                              context)  # [P, H]
      a, b = svd_factors(full, self.rank)
      return {"low_rank_a": a, "low_rank_b": b}
    values = common.joint_params(
        self, {"low_rank_a": (shape_a, A_AXES), "low_rank_b": (shape_b, B_AXES)}, joint)
    return values["low_rank_a"], values["low_rank_b"]

  @nn.compact
  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    del deterministic, batch, batch_size
    common.check_positive("LowRankPrompt", length=self.length, rank=self.rank)
    common.check_choice("LowRankPrompt", "init_mode", self.init_mode, INITS)
    if self.rank > min(self.length, self.spec.embed_dim):
      raise ValueError(f"LowRankPrompt.rank={self.rank} exceeds min(P, H) = "
                       f"{min(self.length, self.spec.embed_dim)}.")
    a, b = self._factors(context)
    prompt = low_rank_prompt(a, b)  # [P, H]
    return common.prompt_hooks(self.spec, prompt, self.placement)


def low_rank_prompt(a: Array, b: Array) -> Array:
  """A [P, b] @ B [b, H] -> [P, H] float32 (the one place it is computed)."""
  return jnp.dot(a.astype(jnp.float32), b.astype(jnp.float32))


def fold(method: LowRankPrompt, params: Params) -> tuple[prompt_tuning.SoftPrompt, Params]:
  """(a `SoftPrompt` with the same placement, {"prompt": A @ B})."""
  params = nn.meta.unbox(params)
  prompt = low_rank_prompt(params["low_rank_a"], params["low_rank_b"])
  folded = prompt_tuning.SoftPrompt(spec=method.spec,
                              length=method.length, placement=method.placement,
                              initializer=initializers.normal())
  return folded, {"prompt": prompt}


def num_params(d_model: int, length: int, rank: int) -> int:
  """The formula b (P + H)."""
  return rank * (length + d_model)
