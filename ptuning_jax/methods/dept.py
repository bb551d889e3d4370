"""DePT: decomposed prompt tuning (Shi & Lipani, ICLR 2024).

A vanilla prompt of length P is replaced, at the same parameter budget, by a
shorter prompt of length m plus a position-indexed low-rank update of the
input embeddings:

  E'(x) = E(x) + (alpha / sqrt(r)) * A[:T] @ B     A: [s, r], B: [r, H]
  encoder input = [P_s; E'(x)]                     P_s: [m, H]

with s the maximum input length (inputs are padded to it; the t-th input
position always receives row t of A @ B) and alpha = `lora_alpha` = 8.
The scaling is alpha / sqrt(r), not alpha / r (DePT's `PromptEmbeddingLoRA`).
A is kaiming-uniform (a = sqrt(5), i.e. U(-1/sqrt(r), 1/sqrt(r))) and B = 0,
so E' = E at the start. The prompt and the factors train with two learning
rates (gin/methods/dept.gin binds the `low_rank` parameter group).

Trainable parameters: m H + r (s + H). `solve_budget` picks (m, r) matching
P H; DePT's T5-Base settings for P = 100 are (m, r, s) = (60, 30, 256),
(40, 45, 256), (80, 15, 256) and (60, 24, 512), all exactly 76,800.

Dimension letters: B batch, T input length (<= s), m prompt length, s max
input length, r rank, H embed width, P the budget's prompt length.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import initializers
from ptuning_jax.methods import placements
from ptuning_jax.methods import common

Array = jax.Array

# DePT's default TEXT initialisation (typo as in the paper's code).
DEPT_INIT_TEXT = "Classify this text is postive or not:"


def repeated_text(prompt_text: str = DEPT_INIT_TEXT) -> initializers.Initializer:
  """Embeddings of `prompt_text`'s pieces, repeated (and truncated) to fill the
  prompt: PEFT's and DePT's TEXT initialisation (no EOS appended)."""
  def init(rng, shape, context):
    del rng
    table = context.require_embedding("repeated_text")
    vocab = context.require_vocab("repeated_text")
    ids = list(vocab.encode(prompt_text))
    if not ids:
      raise ValueError(f"repeated_text: {prompt_text!r} tokenizes to no pieces.")
    if max(ids) >= table.shape[0]:
      raise ValueError(f"repeated_text: {prompt_text!r} has ids beyond the "
                       f"embedding table ({max(ids)} >= {table.shape[0]}).")
    ids = (ids * math.ceil(shape[0] / len(ids)))[:shape[0]]
    return jnp.asarray(table[np.asarray(ids)], jnp.float32)  # [m, H]
  return init


def kaiming_uniform_a(rng: Array, shape: tuple[int, int], context=None) -> Array:
  """DePT's A init: torch kaiming_uniform_(a=sqrt(5)) of [s, r], fan_in = r."""
  del context
  return common.torch_linear_init(shape[1])(rng, shape)


def zeros(rng: Array, shape: tuple[int, ...], context=None) -> Array:
  del rng, context
  return jnp.zeros(shape, jnp.float32)


class DePT(nn.Module):
  """Short prompt + position-indexed low-rank input offset.

  Attributes:
    spec: the backbone's hook spec (`embed_dim` H).
    length: m, length of the short prompt.
    rank: r.
    max_length: s, the maximum (padded) input length.
    alpha: `lora_alpha`; the offset is scaled by alpha / sqrt(r).
    initializer: of the short prompt (default sampled vocabulary; DePT's own
      default is `repeated_text()`, PEFT's RANDOM is `initializers.normal()`).
    a_initializer: of A [s, r].
    b_initializer: of B [r, H].
    placement: where the prompt goes (`placements.PLACEMENTS`), default prefix.
  """
  spec: hooks_lib.HookSpec
  length: int = 60
  rank: int = 30
  max_length: int = 256
  alpha: float = 8.0
  initializer: initializers.Initializer = dataclasses.field(
      default_factory=initializers.sampled_vocab)
  a_initializer: initializers.Initializer = kaiming_uniform_a
  b_initializer: initializers.Initializer = zeros
  placement: str = "prefix"

  @property
  def scaling(self) -> float:
    return self.alpha / math.sqrt(self.rank)

  @nn.compact
  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    del deterministic, batch, batch_size
    common.check_positive("DePT", length=self.length, rank=self.rank,
                          max_length=self.max_length)
    embed = self.spec.embed_dim
    prompt = initializers.prompt_param(self, "prompt", self.initializer,
                                  (self.length, embed), context)  # [m, H]
    a = initializers.prompt_param(self, "low_rank_a", self.a_initializer,
                             (self.max_length, self.rank), context,
                             (None, "prompt_rank"))  # [s, r]
    b = initializers.prompt_param(self, "low_rank_b", self.b_initializer,
                             (self.rank, embed), context,
                             ("prompt_rank", "prompt_embed"))  # [r, H]
    combine = placements.get_placement(self.placement)
    scaling, max_length = self.scaling, self.max_length

    def inputs(x, tokens, mask):
      length = x.shape[1]
      if length > max_length:
        raise ValueError(f"DePT: encoder inputs of length {length} exceed "
                         f"max_length s={max_length} (the rows of A); pad or "
                         "truncate inputs to s, or raise DePT.max_length.")
      offset = scaling * jnp.dot(a[:length], b)  # [T, H]
      x = (x.astype(jnp.float32) + offset[None]).astype(x.dtype)
      tiled = common.broadcast_batch(prompt, x.shape[0])  # [B, m, H]
      return combine(tiled, x, tokens, mask)

    return common.input_hooks(self.spec, inputs)


def num_params(d_model: int, length: int, rank: int, max_length: int) -> int:
  """The formula m H + r (s + H)."""
  return length * d_model + rank * (max_length + d_model)


@dataclasses.dataclass(frozen=True)
class Budget:
  """A DePT configuration: m, r, its parameter count and the budget P H."""
  length: int
  rank: int
  params: int
  budget: int

  @property
  def exact(self) -> bool:
    return self.params == self.budget


def exact_solutions(prompt_length: int, d_model: int, max_length: int) -> list[Budget]:
  """Every (m, r) with m, r >= 1 and m H + r (s + H) == P H exactly."""
  budget = prompt_length * d_model
  out = []
  for m in range(1, prompt_length):
    rest = (prompt_length - m) * d_model
    if rest % (max_length + d_model) == 0:
      out.append(Budget(m, rest // (max_length + d_model), budget, budget))
  return out


def solve_budget(prompt_length: int, d_model: int, max_length: int,
                 length: Optional[int] = None,
                 length_fraction: float = 0.6) -> Budget:
  """Picks DePT's (m, r) for the budget of a length-P prompt, P H parameters.

  Rule: m is `length` if given, else the m closest to `length_fraction * P`
  (DePT's default 60 of 100) for which r = (P - m) H / (s + H) is a whole
  number, so the budget is met exactly; without such an m (or with an
  explicit `length`), r is rounded down so the count stays within budget.
  For T5-Base (H = 768), P = 100: s = 256 gives (60, 30), s = 512 gives
  (60, 24), DePT's published settings. (DePT's MultiRC run, s = 348, used
  (60, 30) = 79,560 > 76,800; the rule here gives (60, 27) = 76,212.)

  Args:
    prompt_length: P of the prompt-tuning baseline.
    d_model: H.
    max_length: s.
    length: m to use; None picks it.
    length_fraction: preferred m / P when picking.
  Returns:
    a `Budget` (check `.exact`).
  Raises:
    ValueError: no (m, r) with m, r >= 1 fits the budget.
  """
  common.check_positive("solve_budget", prompt_length=prompt_length,
                        d_model=d_model, max_length=max_length)
  budget = prompt_length * d_model
  if length is None:
    target = length_fraction * prompt_length
    exact = exact_solutions(prompt_length, d_model, max_length)
    if exact:
      return min(exact, key=lambda b: (abs(b.length - target), -b.length))
    length = max(1, min(prompt_length - 1, round(target)))
  if not 1 <= length < prompt_length:
    raise ValueError(f"solve_budget: length m={length} must lie in [1, P={prompt_length}).")
  rank = (prompt_length - length) * d_model // (max_length + d_model)
  if rank < 1:
    raise ValueError(f"solve_budget: with m={length}, P={prompt_length}, H={d_model}, "
                     f"s={max_length} no rank r >= 1 fits the budget {budget}.")
  return Budget(length, rank, num_params(d_model, length, rank, max_length), budget)
