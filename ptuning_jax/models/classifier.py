"""An encoder backbone, a method and a trainable head: classification,
regression and multiple choice.

`ClassifierModel` is a `task_model.TaskModel` with a head (`heads.
ClassificationHead`), so `trainer.train_step` trains it exactly like the
seq2seq model; its trainable tree adds "head". The two baselines of the
method comparisons are methods too: full fine-tuning
(`methods.baselines.FullFinetune`, the backbone trains) and the head-only
linear probe (`methods.baselines.NoMethod`).

Task kinds (`KINDS`):
  classification   head with C outputs, mean cross-entropy;
  regression       head with one output, mean squared error (STS-B);
  multiple_choice  inputs [B, C, T] are scored one choice per row ([B * C, T]
                   through the encoder, one output each), then a softmax
                   cross-entropy over the C choices (COPA; P-Tuning v2 and
                   `BertForMultipleChoice` do the same).

Batches: `input_ids`, `attention_mask`, `token_type_ids` [B, T] int (or
[B, C, T]), `label` [B] (int class / choice, or float score) and optionally
`example_mask` [B] (0 for padding rows of an evaluation batch). The backbone
is an "encoder" family's module (`encode`, optional `pool`; see
`backbones.registry`).

Dimension letters: B batch, C classes or choices, T input length, T' length
after the method's inputs hook, H hidden size.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from ptuning_jax.models import losses
from ptuning_jax.models import task_model

Array = jax.Array
Params = Any

KINDS = ("classification", "regression", "multiple_choice")
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass(frozen=True, eq=False)
class ClassifierModel(task_model.TaskModel):
  """Encoder + method + trainable head.

  Attributes (besides TaskModel's):
    head: a `heads.ClassificationHead` (num_classes C for classification,
      1 for regression and multiple choice).
    kind: one of KINDS.
  """
  head: Any = None
  kind: str = "classification"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"ClassifierModel.kind={self.kind!r}; expected one of {KINDS}.")
    if self.head is None:
      raise ValueError("ClassifierModel needs a head (heads.ClassificationHead).")
    if self.kind != "classification" and self.head.num_classes != 1:
      raise ValueError(f"ClassifierModel(kind={self.kind!r}) needs a head with "
                       f"num_classes=1, got {self.head.num_classes}.")

  def init_head(self, rng: Array) -> Params:
    hidden = jnp.zeros((1, 1, self.spec.embed_dim), jnp.float32)
    pooler = (lambda x: x) if self.head.use_pooler else None
    return self.head.init(rng, hidden, jnp.ones((1, 1), bool), pooler=pooler)["params"]

  # ---- forward ----

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
    method_rng, backbone_rng, head_rng = task_model.split_rng(rng, 3)
    hk, aux = self.hooks_and_losses(trainables, flat["input_ids"].shape[0], method_rng,
                                    deterministic, method_batch)
    params = self.backbone_params(trainables, frozen)
    hidden, mask = self.backbone.apply(
        {"params": params}, flat["input_ids"], flat["attention_mask"],
        flat.get("token_type_ids"), hooks=hk, deterministic=deterministic,
        rngs=task_model.dropout_rngs(backbone_rng),
        method=self.backbone.encode)  # [B', T', H]
    pooler = None
    if self.head.use_pooler:
      pooler = lambda x: self.backbone.apply({"params": params}, x,  # noqa: E731
                                             method=self.backbone.pool)
    logits = self.head.apply(
        {"params": trainables[task_model.HEAD]}, hidden, mask, pooler=pooler,
        deterministic=deterministic, rngs=task_model.dropout_rngs(head_rng))  # [B', C]
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
    """Mean loss over real examples (plus auxiliary losses and loss terms)
    and metrics, differentiable in `trainables`.

    Metrics use the seq2seq model's names so `trainer` code applies: `loss`
    (the task loss alone), `token_accuracy` (example accuracy; 0 for
    regression), `target_tokens` (number of real examples, the weight of
    this batch when microbatches are combined); plus `mse` for regression
    and `aux_loss` when the method sows one.
    """
    rng, term_rng = task_model.split_rng(rng, 2)
    outputs, aux_loss = self.outputs(trainables, frozen, batch, rng, deterministic)
    labels = batch["label"]
    weights = batch.get("example_mask")
    weights = (jnp.ones(labels.shape[:1], jnp.float32) if weights is None
               else weights.astype(jnp.float32))  # [B]
    count = jnp.sum(weights)
    denom = jnp.maximum(count, 1.0)
    metrics = {"target_tokens": count}
    if self.kind == "regression":
      total = losses.squared_error(outputs, labels, weights)
      correct = jnp.zeros(())
      metrics["mse"] = total / denom
    else:
      total, correct = losses.classification(outputs, labels, weights)
    loss = total / denom
    metrics.update(loss=loss, token_accuracy=correct / denom)
    return self.objective(loss, metrics, aux_loss, trainables, frozen, batch, outputs,
                          term_rng, deterministic)
