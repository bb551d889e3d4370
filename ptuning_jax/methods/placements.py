"""Prompt placements: where prompt vectors go in an embedded input sequence.

Dimension letters: B batch, T input length, P prompt length, H embed width.

A placement is `fn(prompt [B, P, H], x [B, T, H], tokens [B, T], mask [B, T])
-> (x' [B, T + P, H], mask' [B, T + P])`, the signature of an `inputs` hook
(`hooks.Hooks.inputs`) with the prompt bound.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def prefix(prompt: Array, x: Array, tokens: Array, mask: Array) -> tuple[Array, Array]:
  """Prompt before the input.

  Args:
    prompt: [B, P, H] the prompt.
    x: [B, T, H] the embedded input.
    tokens: [B, T] input ids (unused).
    mask: [B, T] input mask.
  Returns:
    ([B, P + T, H], [B, P + T]).
  """
  del tokens
  prompt_mask = jnp.ones(prompt.shape[:2], mask.dtype)
  return (jnp.concatenate([prompt.astype(x.dtype), x], axis=1),
          jnp.concatenate([prompt_mask, mask], axis=1))


def prefix_after_bos(prompt, x, tokens, mask):
  """Prompt after the first input token (the BOS of models that have one)."""
  del tokens
  prompt_mask = jnp.ones(prompt.shape[:2], mask.dtype)
  x_out = jnp.concatenate([x[:, :1], prompt.astype(x.dtype), x[:, 1:]], axis=1)
  mask_out = jnp.concatenate([mask[:, :1], prompt_mask, mask[:, 1:]], axis=1)
  return x_out, mask_out  # [B, P + T, H], [B, P + T]


def suffix(prompt, x, tokens, mask):
  """Prompt right after each example's last real token (after its EOS).

  Example b of length l_b becomes [x_0 .. x_{l-1}, p_0 .. p_{P-1}, pad ...].
  """
  del tokens
  batch, length = mask.shape
  p = prompt.shape[1]
  lengths = jnp.sum(mask > 0, axis=1)[:, None]  # [B, 1]
  pos = jnp.arange(length + p)[None, :]  # [1, T + P]
  in_x = pos < lengths
  in_prompt = (pos >= lengths) & (pos < lengths + p)
  x_idx = jnp.clip(pos, 0, length - 1)
  p_idx = jnp.clip(pos - lengths, 0, p - 1)
  gathered_x = jnp.take_along_axis(
      x, jnp.broadcast_to(x_idx, (batch, length + p))[..., None], axis=1)
  gathered_p = jnp.take_along_axis(prompt.astype(x.dtype), p_idx[..., None], axis=1)
  out = jnp.where(in_x[..., None], gathered_x,
                  jnp.where(in_prompt[..., None], gathered_p, 0))
  return out, (in_x | in_prompt).astype(mask.dtype)  # [B, T + P, H], [B, T + P]


PLACEMENTS = {"prefix": prefix, "prefix_after_bos": prefix_after_bos,
              "suffix": suffix}


def get_placement(name: str):
  if name not in PLACEMENTS:
    raise ValueError(f"Unknown prompt placement {name!r}; expected one of "
                     f"{sorted(PLACEMENTS)}.")
  return PLACEMENTS[name]
