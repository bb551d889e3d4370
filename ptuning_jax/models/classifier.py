"""A BERT-family encoder, a prompt method and a task head: losses and outputs.

`ClassifierModel` is the encoder counterpart of `models.PromptModel`: it
holds no parameters, and its `loss_fn(trainables, frozen, batch, rng,
deterministic)` has the same signature and metric names, so
`trainer.train_step` trains it unchanged. The trainable tree is

  {"method": the prompt method's parameters   (absent without a method),
   "head": the task head's parameters,
   "backbone": every encoder parameter         (full fine-tuning only)}

and `frozen` is the encoder's parameter tree, or `{}` for full fine-tuning.
The two baselines: full fine-tuning (`train_backbone=True`, no method) and
the head-only linear probe (no method, frozen encoder).

Task kinds (`glue_data.KINDS`):
  classification   head with C outputs, mean cross-entropy;
  regression       head with one output, mean squared error (STS-B);
  multiple_choice  inputs [B, C, T] are scored one choice per row ([B * C, T]
                   through the encoder, one output each), then a softmax
                   cross-entropy over the C choices (COPA; P-Tuning v2 and
                   `BertForMultipleChoice` do the same).

Batches: `input_ids`, `attention_mask`, `token_type_ids` [B, T] int (or
[B, C, T]), `label` [B] (int class / choice, or float score) and optionally
`example_mask` [B] (0 for padding rows of an evaluation batch).

Dimension letters: B batch, C classes or choices, T input length, T' length
after the method's input hook, H hidden size.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptuning_jax.backbones import bert
from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import initializers

Array = jax.Array
Params = Any

KINDS = ("classification", "regression", "multiple_choice")
# Flax collection in which methods `sow` auxiliary loss terms (as models.py).
AUX_LOSSES = "losses"
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass(frozen=True, eq=False)
class ClassifierModel:
  """Encoder + optional prompt method + trainable head.

  Attributes:
    backbone: the `bert.BertEncoder`.
    head: a `bert.ClassificationHead` (num_classes C for classification,
      1 for regression and multiple choice).
    method: a prompt method module (`ptuning_jax.methods` interface) or None.
    kind: one of KINDS.
    train_backbone: full fine-tuning: the encoder parameters are trainable
      (`trainables["backbone"]`) and `frozen` is empty. Excludes a method.
  """
  backbone: bert.BertEncoder
  head: bert.ClassificationHead
  method: Optional[nn.Module] = None
  kind: str = "classification"
  train_backbone: bool = False

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"ClassifierModel.kind={self.kind!r}; expected one of {KINDS}.")
    if self.kind != "classification" and self.head.num_classes != 1:
      raise ValueError(f"ClassifierModel(kind={self.kind!r}) needs a head with "
                       f"num_classes=1, got {self.head.num_classes}.")
    if self.train_backbone and self.method is not None:
      raise ValueError("ClassifierModel: train_backbone=True (full fine-tuning) "
                       "takes no prompt method; got "
                       f"{type(self.method).__name__}.")

  # ---- parameters ----

  def init_trainables(self, rng: Array,
                      context: initializers.InitContext = initializers.InitContext(),
                      backbone_params: Optional[Params] = None) -> Params:
    """Trainable tree (method and head boxed with logical axes).

    Args:
      rng: init key.
      context: the method's `InitContext` (frozen embedding table, vocab).
      backbone_params: the encoder's parameters; required for full
        fine-tuning, where a copy of them becomes `trainables["backbone"]`
        (a copy, so donating the train state never frees the caller's).
    """
    method_rng, head_rng = jax.random.split(rng)
    out = {}
    if self.method is not None:
      out["method"] = self.method.init(method_rng, 1, context)["params"]
    hidden = jnp.zeros((1, 1, self.backbone.config.hidden_size), jnp.float32)
    pooler = (lambda x: x) if self.head.use_pooler else None
    out["head"] = self.head.init(head_rng, hidden, jnp.ones((1, 1), bool),
                                 pooler=pooler)["params"]
    if self.train_backbone:
      if backbone_params is None:
        raise ValueError("ClassifierModel.init_trainables: full fine-tuning "
                         "(train_backbone=True) needs backbone_params.")
      out["backbone"] = jax.tree_util.tree_map(jnp.copy, backbone_params)
    return out

  def frozen_params(self, backbone_params: Params) -> Params:
    """What stays frozen: the encoder's parameters, or {} for full fine-tuning."""
    return {} if self.train_backbone else backbone_params

  def _backbone_params(self, trainables: Params, frozen: Params) -> Params:
    return trainables["backbone"] if self.train_backbone else frozen

  # ---- forward ----

  def _hooks(self, trainables: Params, batch_size: int, rng: Optional[Array],
             deterministic: bool, batch: Optional[Mapping[str, Array]]
             ) -> tuple[hooks_lib.Hooks, Optional[Array]]:
    """The method's hooks and the sum of its sown auxiliary losses (or None)."""
    if self.method is None:
      return hooks_lib.NO_HOOKS, None
    rngs = {"dropout": rng} if rng is not None else {}
    hk, state = self.method.apply({"params": trainables["method"]}, batch_size,
                                  deterministic=deterministic, batch=batch,
                                  rngs=rngs, mutable=[AUX_LOSSES])
    losses = jax.tree_util.tree_leaves(state.get(AUX_LOSSES, {}))
    aux = sum(jnp.sum(x, dtype=jnp.float32) for x in losses) if losses else None
    return hk, aux

  def outputs(self, trainables: Params, frozen: Params, batch: Mapping[str, Array],
              rng: Optional[Array] = None, deterministic: bool = True
              ) -> tuple[Array, Optional[Array]]:
    """Head outputs and the method's auxiliary loss (or None).

    Returns:
      ([B, C] logits (classification, multiple choice) or [B] scores
      (regression), float32; aux loss scalar or None).
    """
    ids = batch["input_ids"]
    if self.kind == "multiple_choice":
      if ids.ndim != 3:
        raise ValueError(f"multiple_choice input_ids must be [B, C, T]; got {ids.shape}.")
      num_choices = ids.shape[1]
      flat = {k: batch[k].reshape((-1, ids.shape[-1]))  # [B * C, T]
              for k in INPUT_KEYS if k in batch}
      method_batch = None  # per-example features do not follow the choice rows
    else:
      flat, method_batch = batch, batch
    rngs = [None] * 3 if rng is None else list(jax.random.split(rng, 3))
    hk, aux = self._hooks(trainables, flat["input_ids"].shape[0], rngs[0],
                          deterministic, method_batch)
    params = self._backbone_params(trainables, frozen)
    hidden, mask = self.backbone.apply(
        {"params": params}, flat["input_ids"], flat["attention_mask"],
        flat.get("token_type_ids"), hooks=hk, deterministic=deterministic,
        rngs={} if rngs[1] is None else {"dropout": rngs[1]},
        method=bert.BertEncoder.encode)  # [B', T', H]
    pooler = bert.pooler_fn(self.backbone, params) if self.head.use_pooler else None
    logits = self.head.apply(
        {"params": trainables["head"]}, hidden, mask, pooler=pooler,
        deterministic=deterministic,
        rngs={} if rngs[2] is None else {"dropout": rngs[2]})  # [B', C]
    if self.kind == "multiple_choice":
      return logits.reshape((-1, num_choices)), aux  # [B, C]
    if self.kind == "regression":
      return logits[:, 0], aux  # [B]
    return logits, aux

  def predict(self, trainables: Params, frozen: Params,
              batch: Mapping[str, Array]) -> Array:
    """Deterministic outputs: [B, C] logits or [B] scores (see `outputs`)."""
    return self.outputs(trainables, frozen, batch)[0]

  # ---- training ----

  def loss_fn(self, trainables: Params, frozen: Params, batch: Mapping[str, Array],
              rng: Optional[Array] = None, deterministic: bool = True):
    """Mean loss over real examples (plus the method's auxiliary losses) and
    metrics, differentiable in `trainables`.

    Metrics use `models.PromptModel`'s names so `trainer` code applies:
    `loss` (the task loss alone), `token_accuracy` (example accuracy; 0 for
    regression), `target_tokens` (number of real examples, the weight of
    this batch when microbatches are combined); plus `mse` for regression
    and `aux_loss` when the method sows one.
    """
    outputs, aux_loss = self.outputs(trainables, frozen, batch, rng, deterministic)
    labels = batch["label"]
    weights = batch.get("example_mask")
    weights = (jnp.ones(labels.shape[:1], jnp.float32) if weights is None
               else weights.astype(jnp.float32))  # [B]
    denom = jnp.maximum(jnp.sum(weights), 1.0)
    metrics = {"target_tokens": jnp.sum(weights)}
    if self.kind == "regression":
      per_example = jnp.square(outputs - labels.astype(jnp.float32))  # [B]
      correct = jnp.zeros_like(per_example)
      metrics["mse"] = jnp.sum(per_example * weights) / denom
    else:
      log_probs = jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)  # [B, C]
      per_example = -jnp.take_along_axis(
          log_probs, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]  # [B]
      correct = (jnp.argmax(outputs, axis=-1) == labels).astype(jnp.float32)
    loss = jnp.sum(per_example * weights) / denom
    metrics.update(loss=loss, token_accuracy=jnp.sum(correct * weights) / denom)
    if aux_loss is not None:
      metrics["aux_loss"] = aux_loss
      return loss + aux_loss, metrics
    return loss, metrics


def num_params(tree: Params) -> int:
  """Scalars in the (boxed or plain) array leaves of `tree`."""
  leaves = jax.tree_util.tree_leaves(nn.meta.unbox(tree))
  return int(sum(x.size for x in leaves))
