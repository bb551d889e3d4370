"""Text-to-text on an encoder-decoder backbone: loss, scoring, decoding.

Dimension letters: B batch, T encoder input length, T' after the method's
inputs hook, S target length, V vocabulary, C candidates, H hidden width.

Batches use seqio's encoder-decoder feature names: `encoder_input_tokens`
[B, T], `decoder_input_tokens` [B, S], `decoder_target_tokens` [B, S],
`decoder_loss_weights` [B, S], plus per-example method features (e.g.
`task_index` [B]). The backbone is a "seq2seq" family's module (`encode`,
`decode`; see `backbones.registry`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.models import decoding
from ptuning_jax.models import losses
from ptuning_jax.models import task_model

Array = jax.Array
Params = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Outputs:
  """A teacher-forced pass: logits [B, S, V] float32, the encoder output
  `encoded` [B, T', H] with its mask [B, T'], and the decoder output
  `decoded` [B, S, H] (decoder-prefix positions dropped)."""
  logits: Array
  encoded: Array
  encoder_mask: Array
  decoded: Array


@dataclasses.dataclass(frozen=True, eq=False)
class Seq2SeqModel(task_model.TaskModel):
  """Backbone + method on text-to-text examples (see `task_model.TaskModel`).

  Attributes (besides TaskModel's):
    z_loss: auxiliary log-partition loss (T5X's z-loss), default off.
    label_smoothing: default off.
  """
  z_loss: float = 0.0
  label_smoothing: float = 0.0

  # ---- forward ----

  def forward(self, params: Params, batch: Mapping[str, Array],
              hooks: hooks_lib.Hooks, deterministic: bool = True,
              rng: Optional[Array] = None) -> Outputs:
    """Teacher-forced pass of the backbone with `params` and `hooks`."""
    encode_rng, decode_rng = task_model.split_rng(rng, 2)
    variables = {"params": params}
    encoded, mask = self.backbone.apply(
        variables, batch["encoder_input_tokens"], hooks=hooks,
        deterministic=deterministic, rngs=task_model.dropout_rngs(encode_rng),
        method=self.backbone.encode)
    logits, decoded = self.backbone.apply(
        variables, encoded, mask, batch["decoder_input_tokens"], hooks=hooks,
        deterministic=deterministic, return_hidden=True,
        rngs=task_model.dropout_rngs(decode_rng), method=self.backbone.decode)
    return Outputs(logits, encoded, mask, decoded)

  # ---- training ----

  def loss_fn(self, trainables: Params, frozen: Params, batch: Mapping[str, Array],
              rng: Optional[Array] = None, deterministic: bool = True):
    """Mean token cross-entropy plus auxiliary losses and loss terms, and
    metrics (`loss` is the cross-entropy alone); differentiable in
    `trainables`. The whole batch reaches the method (e.g. `task_index`)."""
    method_rng, backbone_rng, term_rng = task_model.split_rng(rng, 3)
    tokens = batch["encoder_input_tokens"]
    hk, aux_loss = self.hooks_and_losses(trainables, tokens.shape[0], method_rng,
                                         deterministic, batch)
    outputs = self.forward(self.backbone_params(trainables, frozen), batch, hk,
                           deterministic, backbone_rng)
    total, weight, correct = losses.cross_entropy(
        outputs.logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
        self.z_loss, self.label_smoothing)
    denom = jnp.maximum(weight, 1.0)
    loss = total / denom
    metrics = {"loss": loss, "token_accuracy": correct / denom, "target_tokens": weight}
    return self.objective(loss, metrics, aux_loss, trainables, frozen, batch, outputs,
                          term_rng, deterministic)

  # ---- inference ----

  def predict_batch(self, trainables: Params, frozen: Params,
                    batch: Mapping[str, Array], max_decode_length: int,
                    eos_id: int = 1) -> Array:
    """Greedy decodes [B, S] with the method's hooks.

    `batch` holds `encoder_input_tokens` [B, T] and any per-example features
    the method reads (e.g. `task_index` [B]).
    """
    tokens = batch["encoder_input_tokens"]
    hk = self.hooks(trainables, tokens.shape[0], batch=batch)
    return decoding.greedy_decode(
        self.backbone, self.backbone_params(trainables, frozen), tokens,
        max_decode_length=max_decode_length, hooks=hk, eos_id=eos_id)

  def score_batch(self, trainables: Params, frozen: Params,
                  batch: Mapping[str, Array]) -> Array:
    """Log-likelihood [B] of each example's target."""
    tokens = batch["encoder_input_tokens"]
    hk = self.hooks(trainables, tokens.shape[0], batch=batch)
    return decoding.sequence_log_likelihood(
        self.backbone, self.backbone_params(trainables, frozen), tokens,
        batch["decoder_input_tokens"], batch["decoder_target_tokens"],
        batch["decoder_loss_weights"], hooks=hk)

  def rank_classify(self, trainables: Params, frozen: Params,
                    batch: Mapping[str, Array], candidate_targets: Array) -> Array:
    """Scores [B, C]: log-likelihood of each candidate target [C, S] for the
    inputs `batch["encoder_input_tokens"]` [B, T] (plus method features)."""
    tokens = batch["encoder_input_tokens"]
    hk = self.hooks(trainables, tokens.shape[0], batch=batch)
    return decoding.rank_classify(self.backbone, self.backbone_params(trainables, frozen),
                                  tokens, candidate_targets, hooks=hk)
