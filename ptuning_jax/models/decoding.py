"""Inference with a frozen encoder-decoder: greedy decoding and scoring.

All functions are pure and traceable, and are NOT jitted here: callers build
`hooks` from trainable parameters inside their own `jax.jit`. Use
`jit_greedy_decode` for hook-free decoding.

Dimension letters: B batch, T encoder length, S target length, C candidates,
V vocabulary, H d_model, Pd decoder prefix length.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from ptuning_jax import hooks as hooks_lib

Array = jax.Array
Params = Any
NO_HOOKS = hooks_lib.NO_HOOKS


def greedy_decode(model, params: Params, encoder_input_tokens: Array, *,
                  max_decode_length: int, hooks: hooks_lib.Hooks = NO_HOOKS,
                  eos_id: int = 1) -> Array:
  """Greedy (argmax) decoding with a key/value cache.

  The decoder starts from `config.decoder_start_token_id`; a decoder `prefix`
  hook is prefilled into the cache with the start token. Rows stop at their
  first `eos_id` (kept); later positions are pad 0. The loop exits early
  when every row has finished.

  Args:
    model: a seq2seq module (e.g. `t5.T5`).
    params: its params (unboxed).
    encoder_input_tokens: [B, T] int ids.
    max_decode_length: S, number of tokens to generate at most.
    hooks: prompt-method hooks (the same for every step).
    eos_id: end-of-sequence id.
  Returns:
    [B, S] int32 generated tokens (without the start token).
  """
  if max_decode_length < 1:
    raise ValueError(f"max_decode_length must be >= 1, got {max_decode_length}.")
  config = model.config
  variables = {"params": params}
  encoded, encoder_mask = model.apply(variables, encoder_input_tokens, hooks=hooks,
                                      method=model.encode)
  batch = encoder_input_tokens.shape[0]
  decode = functools.partial(model.apply, method=model.decode, decode=True,
                             mutable=["cache"])
  # Allocation call: sizes the cache for Pd + S positions, stores cross K/V.
  _, state = decode(variables, encoded, encoder_mask,
                    jnp.zeros((batch, max_decode_length), jnp.int32), hooks=hooks)
  start = jnp.full((batch, 1), config.decoder_start_token_id, jnp.int32)
  logits, state = decode({"params": params, "cache": state["cache"]}, encoded,
                         encoder_mask, start, hooks=hooks)  # prefill
  step_hooks = hooks.without_prefix()
  token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)  # [B]
  out = jnp.zeros((batch, max_decode_length), jnp.int32).at[:, 0].set(token)
  done = token == eos_id

  def cond(carry):
    i, _, _, done, _ = carry
    return (i < max_decode_length) & ~jnp.all(done)

  def body(carry):
    i, cache, token, done, out = carry
    logits, state = decode({"params": params, "cache": cache}, encoded,
                           encoder_mask, token[:, None], hooks=step_hooks)
    nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    nxt = jnp.where(done, config.pad_token_id, nxt)
    out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i))
    return i + 1, state["cache"], nxt, done | (nxt == eos_id), out

  carry = (jnp.asarray(1, jnp.int32), state["cache"], token, done, out)
  return jax.lax.while_loop(cond, body, carry)[-1]


def token_log_probs(logits: Array, targets: Array) -> Array:
  """log p(target) per position. logits [..., S, V], targets [..., S] -> [..., S]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def sequence_log_likelihood(model, params: Params, encoder_input_tokens: Array,
                            decoder_input_tokens: Array, decoder_target_tokens: Array,
                            decoder_loss_weights: Array, *,
                            hooks: hooks_lib.Hooks = NO_HOOKS) -> Array:
  """Sum of weighted target-token log-probabilities.

  Args:
    model: a seq2seq module (e.g. `t5.T5`).
    params: its params.
    encoder_input_tokens: [B, T].
    decoder_input_tokens: [B, S] (targets shifted right).
    decoder_target_tokens: [B, S].
    decoder_loss_weights: [B, S] (0 on padding).
    hooks: prompt-method hooks.
  Returns:
    [B] float32 log-likelihoods.
  """
  logits = model.apply({"params": params}, encoder_input_tokens,
                       decoder_input_tokens, hooks=hooks)  # [B, S, V]
  scores = token_log_probs(logits, decoder_target_tokens)
  return jnp.sum(scores * decoder_loss_weights.astype(jnp.float32), axis=-1)


def shift_right(targets: Array, start_id: int = 0) -> Array:
  """Decoder inputs from targets [..., S]: start token, then targets[..., :-1]."""
  start = jnp.full(targets.shape[:-1] + (1,), start_id, targets.dtype)
  return jnp.concatenate([start, targets[..., :-1]], axis=-1)


def rank_classify(model, params: Params, encoder_input_tokens: Array,
                  candidate_targets: Array, *,
                  hooks: hooks_lib.Hooks = NO_HOOKS) -> Array:
  """Log-likelihood of every candidate target, encoding each input once.

  Candidates are right-padded with pad 0, which carries no weight; decoder
  inputs are the candidates shifted right. The decoder runs once per
  candidate (vmapped), with the same hooks (batch [B]) as a plain call.

  Args:
    model: a seq2seq module (e.g. `t5.T5`).
    params: its params.
    encoder_input_tokens: [B, T].
    candidate_targets: [B, C, S] per-example candidates or [C, S] shared.
    hooks: prompt-method hooks.
  Returns:
    scores [B, C] float32.
  """
  config = model.config
  batch = encoder_input_tokens.shape[0]
  if candidate_targets.ndim == 2:
    candidate_targets = jnp.broadcast_to(candidate_targets[None],
                                         (batch,) + candidate_targets.shape)
  if candidate_targets.ndim != 3 or candidate_targets.shape[0] != batch:
    raise ValueError(f"candidate_targets must be [B={batch}, C, S] or [C, S]; got "
                     f"shape {candidate_targets.shape}.")
  variables = {"params": params}
  encoded, encoder_mask = model.apply(variables, encoder_input_tokens, hooks=hooks,
                                      method=model.encode)

  def score(targets):  # [B, S] -> [B]
    inputs = shift_right(targets, config.decoder_start_token_id)
    logits = model.apply(variables, encoded, encoder_mask, inputs, hooks=hooks,
                         method=model.decode)  # [B, S, V]
    weights = (targets != config.pad_token_id).astype(jnp.float32)
    return jnp.sum(token_log_probs(logits, targets) * weights, axis=-1)

  return jax.vmap(score, in_axes=1, out_axes=1)(candidate_targets)  # [B, C]


@functools.lru_cache(maxsize=64)
def _jitted_greedy(model, max_decode_length: int, eos_id: int):
  return jax.jit(functools.partial(greedy_decode, model,
                                   max_decode_length=max_decode_length, eos_id=eos_id))


def jit_greedy_decode(model, params: Params, encoder_input_tokens: Array, *,
                      max_decode_length: int, eos_id: int = 1) -> Array:
  """Jitted hook-free `greedy_decode` (compiled once per model and length)."""
  return _jitted_greedy(model, max_decode_length, eos_id)(params, encoder_input_tokens)
