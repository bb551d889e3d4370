"""A frozen backbone plus a trainable prompt method: losses, scoring, decoding.

Dimension letters: B batch, T encoder input length, S target length,
V vocabulary, C candidates.

`PromptModel` never holds parameters. Trainable parameters (the method's) and
frozen parameters (the backbone's) are separate pytrees passed to every call;
gradients are taken only with respect to the trainables, so no weight-gradient
work, gradient buffers or optimizer state exist for the backbone.

Batches use seqio's encoder-decoder feature names: `encoder_input_tokens`
[B, T], `decoder_input_tokens` [B, S], `decoder_target_tokens` [B, S],
`decoder_loss_weights` [B, S].
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ptuning_jax.models import decoding
from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning

Array = jax.Array
Params = Any

# Flax collection in which methods `sow` auxiliary loss terms.
AUX_LOSSES = "losses"


def cross_entropy(logits: Array, targets: Array, weights: Array,
                  z_loss: float = 0.0, label_smoothing: float = 0.0):
  """Token cross-entropy in float32.

  Equal to `-sum(smoothed_onehot * log_softmax(logits))` per token, computed
  without materialising a [B, S, V] one-hot (a gather of the target logit and
  the mean logit instead): fewer passes over the largest activation of the
  step. Targets outside [0, V) contribute no cross-entropy and are never
  correct, as with a one-hot. `correct` is argmax's first-maximum rule,
  written as two plain reductions, which XLA's CPU backend runs much faster
  than a variadic argmax reduce.

  Args:
    logits: [B, S, V].
    targets: [B, S] ids.
    weights: [B, S] loss weights.
  Returns:
    (sum of weighted losses, sum of weights, number of correct weighted tokens).
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, S]
  valid = (targets >= 0) & (targets < vocab)
  target_logit = jnp.take_along_axis(
      logits, jnp.clip(targets, 0, vocab - 1)[..., None], axis=-1)[..., 0]  # [B, S]
  loss = jnp.where(valid, log_z - target_logit, 0.0)  # [B, S]
  if label_smoothing:
    # Smoothed one-hot (1 - a) onehot + a / V: the a / V part costs
    # log_z - mean(logits) per token.
    loss = ((1 - label_smoothing) * loss
            + label_smoothing * (log_z - jnp.mean(logits, axis=-1)))
  if z_loss:
    loss = loss + z_loss * jnp.square(log_z)
  first_max = jnp.min(jnp.where(
      logits == jnp.max(logits, axis=-1, keepdims=True),
      lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1), vocab),
      axis=-1)  # [B, S], = argmax
  correct = (valid & (first_max == targets)).astype(jnp.float32)
  return jnp.sum(loss * weights), jnp.sum(weights), jnp.sum(correct * weights)


@dataclasses.dataclass(frozen=True, eq=False)
class PromptModel:
  """Wraps `backbone` (a `t5.T5`) and `method` (a module returning `Hooks`).

  Attributes:
    backbone: the frozen network.
    method: a Flax module `method(batch_size, context, deterministic, batch)
      -> Hooks` holding all trainable parameters (e.g. `prompt_tuning.SoftPrompt`;
      see `ptuning_jax.methods` for the interface). A method may add
      auxiliary loss terms with `self.sow("losses", name, scalar)`; they are
      added to the training objective (and reported as `aux_loss`).
    z_loss: auxiliary log-partition loss (T5X's z-loss), default off.
    label_smoothing: default off.
  """
  backbone: nn.Module
  method: nn.Module
  z_loss: float = 0.0
  label_smoothing: float = 0.0

  # ---- parameters ----

  def init_trainables(self, rng: Array, context: initializers.InitContext) -> Params:
    """Boxed (logically partitioned) trainable params of the method."""
    return self.method.init(rng, 1, context)["params"]

  def abstract_trainables(self, context: initializers.InitContext) -> Params:
    return jax.eval_shape(lambda r: self.init_trainables(r, context),
                          jax.random.key(0))

  def hooks_and_losses(self, trainables: Params, batch_size: int,
                       rng: Optional[Array] = None, deterministic: bool = True,
                       batch: Optional[Mapping[str, Array]] = None
                       ) -> tuple[hooks_lib.Hooks, Optional[Array]]:
    """The method's hooks and the sum of its sown auxiliary losses (or None)."""
    rngs = {"dropout": rng} if rng is not None else {}
    hk, state = self.method.apply({"params": trainables}, batch_size,
                                  deterministic=deterministic, batch=batch,
                                  rngs=rngs, mutable=[AUX_LOSSES])
    losses = jax.tree_util.tree_leaves(state.get(AUX_LOSSES, {}))
    aux = sum(jnp.sum(x, dtype=jnp.float32) for x in losses) if losses else None
    return hk, aux

  def hooks(self, trainables: Params, batch_size: int,
            rng: Optional[Array] = None, deterministic: bool = True,
            batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    return self.hooks_and_losses(trainables, batch_size, rng, deterministic,
                                 batch)[0]

  # ---- training ----

  def loss_fn(self, trainables: Params, frozen: Params, batch: Mapping[str, Array],
              rng: Optional[Array] = None, deterministic: bool = True):
    """Mean token cross-entropy plus the method's auxiliary losses, and
    metrics (`loss` is the cross-entropy alone); differentiable in
    `trainables`. The whole batch reaches the method (e.g. `task_index`)."""
    method_rng = backbone_rng = None
    if rng is not None:
      method_rng, backbone_rng = jax.random.split(rng)
    tokens = batch["encoder_input_tokens"]
    hk, aux_loss = self.hooks_and_losses(trainables, tokens.shape[0], method_rng,
                                         deterministic, batch)
    rngs = {"dropout": backbone_rng} if backbone_rng is not None else {}
    logits = self.backbone.apply(
        {"params": frozen}, tokens, batch["decoder_input_tokens"], hooks=hk,
        deterministic=deterministic, rngs=rngs)  # [B, S, V]
    total, weight, correct = cross_entropy(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
        self.z_loss, self.label_smoothing)
    denom = jnp.maximum(weight, 1.0)
    loss = total / denom
    metrics = {"loss": loss, "token_accuracy": correct / denom,
               "target_tokens": weight}
    if aux_loss is not None:
      metrics["aux_loss"] = aux_loss
      return loss + aux_loss, metrics
    return loss, metrics

  # ---- inference ----

  def predict_batch(self, trainables: Params, frozen: Params,
                    batch: Mapping[str, Array], max_decode_length: int,
                    eos_id: int = 1) -> Array:
    """Greedy decodes [B, S] with the method's hooks.

    `batch` holds `encoder_input_tokens` [B, T] and any per-example features
    the method reads (e.g. `task_index` [B]).
    """
    encoder_input_tokens = batch["encoder_input_tokens"]
    hk = self.hooks(trainables, encoder_input_tokens.shape[0], batch=batch)
    return decoding.greedy_decode(
        self.backbone, frozen, encoder_input_tokens,
        max_decode_length=max_decode_length, hooks=hk, eos_id=eos_id)

  def score_batch(self, trainables: Params, frozen: Params,
                  batch: Mapping[str, Array]) -> Array:
    """Log-likelihood [B] of each example's target."""
    tokens = batch["encoder_input_tokens"]
    hk = self.hooks(trainables, tokens.shape[0], batch=batch)
    return decoding.sequence_log_likelihood(
        self.backbone, frozen, tokens, batch["decoder_input_tokens"],
        batch["decoder_target_tokens"], batch["decoder_loss_weights"], hooks=hk)

  def rank_classify(self, trainables: Params, frozen: Params,
                    batch: Mapping[str, Array], candidate_targets: Array) -> Array:
    """Scores [B, C]: log-likelihood of each candidate target [C, S] for the
    inputs `batch["encoder_input_tokens"]` [B, T] (plus method features)."""
    encoder_input_tokens = batch["encoder_input_tokens"]
    hk = self.hooks(trainables, encoder_input_tokens.shape[0], batch=batch)
    return decoding.rank_classify(self.backbone, frozen, encoder_input_tokens,
                                  candidate_targets, hooks=hk)
