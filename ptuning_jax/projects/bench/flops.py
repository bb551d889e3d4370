"""Model FLOPs of a prompt-tuning training step, and dot FLOPs of a jaxpr.

Dimension letters:
  B batch, T input length, P prompt length (encoder side), E = P + T the
  encoder length the backbone sees, S target length, H d_model, N heads,
  D head dim (d_kv), I = N * D attention inner width, F MLP dim (d_ff),
  V vocabulary, L_e / L_d encoder / decoder layers, G MLP input matrices
  (2 for gated-GELU T5 1.1 `wi_0`, `wi_1`; 1 for ReLU original T5 `wi`).

Derivation (one multiply-add = 2 FLOPs; a [m, k] x [k, n] matmul = 2 m k n):

  Encoder, per layer, on E = P + T positions (the prompt is encoded like any
  token):
    q, k, v projections  3 * 2 E H I
    scores  Q K^T        2 E E I          (N heads of [E, D] x [D, E])
    mixing  A V          2 E E I
    output projection    2 E I H
    MLP                  (G + 1) * 2 E H F
  Decoder, per layer, on S positions, attending to E encoder positions:
    self-attention       4 * 2 S H I + 2 * 2 S S I   (the causal mask is
                         applied to a full S x S score matrix, as computed)
    cross-attention      2 S H I (q) + 2 * 2 E H I (k, v of the encoder
                         output) + 2 * 2 S E I (scores, mixing) + 2 S I H (out)
    MLP                  (G + 1) * 2 S H F
  LM head                2 S H V  (untied `logits_dense` or tied embedding)

  forward = B * (L_e * encoder layer + L_d * decoder layer + LM head).

  Not counted: embedding lookups and the relative position bias (gathers,
  no multiply-adds; the bias adds B N E E + B N S S additions per stack
  layer, under 1/(2 D) of the score matmuls it is added to, i.e. < 1% at
  D = 64), RMS norms, GELU, softmax, residual adds and the cross-entropy
  (elementwise, O(B E H) each, negligible next to the O(B E H^2) matmuls).

Training step. Prompt tuning differentiates the loss with respect to the
prompt only: every frozen weight W enters as a constant, so the backward pass
of a projection y = x W computes the input gradient dx = dy W^T (one matmul
the size of the forward one) and never the weight gradient dW = x^T dy. The
convention used for `model_flops_per_step` (and MFU) is therefore

  train step = forward + input-gradient backward = 2 * forward

(full fine-tuning would be 3 * forward). This is the usual "model FLOPs"
idealisation; the work actually executed differs in two small ways, which
`dot_flops` of the real step's jaxpr measures exactly: the attention matmuls
have two activation operands, so their backward costs 2x their forward
(dQ and dK; dA and dV), adding 2 * (attention score + mixing FLOPs); and
decoder computations that do not depend on the prompt (the first decoder
layer's self-attention, its cross-attention query) get no backward at all.
Rematerialisation recomputes forward work that is not counted either (model
FLOPs, not hardware FLOPs).
"""
from __future__ import annotations

import math
from typing import Any

import jax
from jax.extend import core

from ptuning_jax.backbones import t5

TERMS = ("encoder_projections", "encoder_attention", "encoder_mlp",
         "decoder_projections", "decoder_self_attention",
         "decoder_cross_attention", "decoder_mlp", "lm_head")


def _check_lengths(**lengths: int) -> None:
  for name, value in lengths.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ValueError(f"flops: {name} must be a non-negative int, got {value!r}.")
  for name in ("batch", "input_length", "target_length"):
    if lengths.get(name) == 0:
      raise ValueError(f"flops: {name} must be positive, got 0.")


def forward_flops_breakdown(config: t5.T5Config, batch: int, input_length: int,
                            target_length: int, prompt_length: int = 0
                            ) -> dict[str, int]:
  """Forward matmul FLOPs per term of the module docstring.

  Args:
    config: the backbone architecture.
    batch: B.
    input_length: T (tokens, without the prompt).
    target_length: S.
    prompt_length: P, prepended on the encoder side (E = P + T).
  Returns:
    {term: FLOPs} over the whole batch, keys `TERMS`.
  """
  _check_lengths(batch=batch, input_length=input_length,
                 target_length=target_length, prompt_length=prompt_length)
  b, s = batch, target_length
  e = prompt_length + input_length
  h, f, v = config.d_model, config.d_ff, config.vocab_size
  i = config.num_heads * config.d_kv
  g = 2 if config.feed_forward == "gated-gelu" else 1
  le, ld = config.num_encoder_layers, config.num_decoder_layers
  return {
      "encoder_projections": b * le * (4 * 2 * e * h * i),
      "encoder_attention": b * le * (2 * 2 * e * e * i),
      "encoder_mlp": b * le * ((g + 1) * 2 * e * h * f),
      "decoder_projections": b * ld * (4 * 2 * s * h * i),
      "decoder_self_attention": b * ld * (2 * 2 * s * s * i),
      "decoder_cross_attention": b * ld * (2 * 2 * s * h * i + 2 * 2 * e * h * i
                                           + 2 * 2 * s * e * i),
      "decoder_mlp": b * ld * ((g + 1) * 2 * s * h * f),
      "lm_head": b * 2 * s * h * v,
  }


def forward_flops(config: t5.T5Config, batch: int, input_length: int,
                  target_length: int, prompt_length: int = 0) -> int:
  """Forward matmul FLOPs of the backbone on one batch (see the module docstring)."""
  return sum(forward_flops_breakdown(config, batch, input_length, target_length,
                                     prompt_length).values())


def train_step_flops(config: t5.T5Config, batch: int, input_length: int,
                     target_length: int, prompt_length: int = 0) -> int:
  """Model FLOPs of one prompt-tuning step: forward + input-gradient backward
  = 2 * forward (no weight gradients)."""
  return 2 * forward_flops(config, batch, input_length, target_length,
                           prompt_length)


# ------------------------------ jaxpr counting -------------------------------


def _dot_general_flops(eqn: core.JaxprEqn) -> int:
  lhs, rhs = (x.aval.shape for x in eqn.invars[:2])
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
  contract = math.prod(lhs[d] for d in lhs_contract)
  batch = math.prod(lhs[d] for d in lhs_batch)
  lhs_free = math.prod(n for d, n in enumerate(lhs)
                       if d not in lhs_contract and d not in lhs_batch)
  rhs_free = math.prod(n for d, n in enumerate(rhs)
                       if d not in rhs_contract and d not in rhs_batch)
  return 2 * batch * contract * lhs_free * rhs_free


def _sub_jaxprs(value: Any) -> list[core.Jaxpr]:
  if isinstance(value, core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for item in value for j in _sub_jaxprs(item)]
  return []


def dot_flops(jaxpr: core.Jaxpr | core.ClosedJaxpr) -> int:
  """FLOPs of every `dot_general` in `jaxpr`, nested calls included.

  `scan` bodies count `length` times, `cond` its most expensive branch;
  a `while` loop (unknown trip count) is an error. Use on
  `jax.make_jaxpr(fn)(*args)` to count the matmul work a function really
  traces (forward, backward, rematerialised recomputation).
  """
  jaxpr = jaxpr.jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else jaxpr
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_general_flops(eqn)
    elif name == "while":
      raise ValueError("dot_flops: a `while` loop has no static trip count "
                       f"(at {eqn.source_info.name_stack}).")
    elif name == "cond":
      total += max(dot_flops(b) for b in eqn.params["branches"])
    else:
      inner = sum(dot_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
      total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total


def dot_output_shapes(jaxpr: core.Jaxpr | core.ClosedJaxpr) -> list[tuple[int, ...]]:
  """Output shapes of every `dot_general` in `jaxpr`, nested calls included."""
  jaxpr = jaxpr.jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else jaxpr
  shapes = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      shapes.append(tuple(eqn.outvars[0].aval.shape))
    for value in eqn.params.values():
      for sub in _sub_jaxprs(value):
        shapes.extend(dot_output_shapes(sub))
  return shapes


def traced_dot_flops(fn, *args, **kwargs) -> int:
  """`dot_flops` of `jax.make_jaxpr(fn)(*args, **kwargs)`."""
  return dot_flops(jax.make_jaxpr(fn)(*args, **kwargs))
