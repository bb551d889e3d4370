"""What every task model shares: the trainable/frozen partition and the method.

A task model scores a frozen backbone plus a trainable method on one kind of
task (`seq2seq.Seq2SeqModel`: text-to-text; `classifier.ClassifierModel`:
classification / regression / multiple choice with a head). It never holds
parameters: trainable and frozen parameters are separate pytrees passed to
every call, and gradients are taken only with respect to the trainables, so
no weight-gradient work, gradient buffers or optimizer state exist for the
frozen backbone.

The trainable tree:
  {"method": the method's parameters,
   "head": the task head's parameters          (models with a head),
   "backbone": every backbone parameter        (full fine-tuning only)}
and `frozen` is the backbone's parameter tree, or {} for full fine-tuning (a
method whose `trains_backbone` is True, `methods.baselines.FullFinetune`).

Loss terms. Besides the task loss, the objective adds the method's sown
auxiliary losses (`self.sow("losses", name, scalar)`, reported as
`aux_loss`) and the model's `loss_terms` (e.g. prompt distillation,
`losses.PromptDistillation`), each reporting its own metrics.

Dimension letters: B batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import initializers

Array = jax.Array
Params = Any

# Flax collection in which methods `sow` auxiliary loss terms.
AUX_LOSSES = "losses"
METHOD, HEAD, BACKBONE = "method", "head", "backbone"


@dataclasses.dataclass(frozen=True, eq=False)
class TaskModel:
  """Backbone + method; subclasses add the task's forward pass and loss.

  Attributes:
    backbone: the frozen network (a registered family's module).
    method: a method module (`ptuning_jax.methods` interface).
    loss_terms: extra objective terms, each `term(model, trainables, frozen,
      batch, outputs, rng, deterministic) -> (scalar, metrics)`; `outputs` is
      what the subclass's forward pass returned.
  """
  backbone: nn.Module
  method: nn.Module
  loss_terms: Sequence[Any] = ()

  @property
  def train_backbone(self) -> bool:
    """Full fine-tuning: the backbone's parameters are trainables."""
    return bool(getattr(self.method, "trains_backbone", False))

  @property
  def spec(self) -> hooks_lib.HookSpec:
    return self.method.spec

  # ---- parameters ----

  def init_trainables(self, rng: Array,
                      context: initializers.InitContext = initializers.InitContext(),
                      backbone_params: Optional[Params] = None) -> Params:
    """The boxed (logically partitioned) trainable tree (module docstring).

    Args:
      rng: init key.
      context: the method's `InitContext` (frozen embedding table, vocab).
      backbone_params: the backbone's parameters; required for full
        fine-tuning, where a copy of them becomes `trainables["backbone"]`
        (a copy, so donating the train state never frees the caller's).
    """
    method_rng, head_rng = jax.random.split(rng)
    out = {METHOD: self.method.init(method_rng, 1, context).get("params", {})}
    head = self.init_head(head_rng)
    if head is not None:
      out[HEAD] = head
    if self.train_backbone:
      if backbone_params is None:
        raise ValueError(f"{type(self).__name__}.init_trainables: full fine-tuning "
                         "needs backbone_params.")
      out[BACKBONE] = jax.tree_util.tree_map(jnp.copy, backbone_params)
    return out

  def init_head(self, rng: Array) -> Optional[Params]:
    """The head's boxed parameters; None for models without a head."""
    del rng
    return None

  def abstract_trainables(self, context: initializers.InitContext,
                          backbone_params: Optional[Params] = None) -> Params:
    return jax.eval_shape(lambda r: self.init_trainables(r, context, backbone_params),
                          jax.random.key(0))

  def frozen_params(self, backbone_params: Params) -> Params:
    """What stays frozen: the backbone's parameters, or {} for full fine-tuning."""
    return {} if self.train_backbone else backbone_params

  def backbone_params(self, trainables: Params, frozen: Params) -> Params:
    return trainables[BACKBONE] if self.train_backbone else frozen

  # ---- the method ----

  def hooks_and_losses(self, trainables: Params, batch_size: int,
                       rng: Optional[Array] = None, deterministic: bool = True,
                       batch: Optional[Mapping[str, Array]] = None
                       ) -> tuple[hooks_lib.Hooks, Optional[Array]]:
    """The method's hooks and the sum of its sown auxiliary losses (or None)."""
    rngs = {"dropout": rng} if rng is not None else {}
    hk, state = self.method.apply({"params": trainables[METHOD]}, batch_size,
                                  deterministic=deterministic, batch=batch,
                                  rngs=rngs, mutable=[AUX_LOSSES])
    losses = jax.tree_util.tree_leaves(state.get(AUX_LOSSES, {}))
    aux = sum(jnp.sum(x, dtype=jnp.float32) for x in losses) if losses else None
    return hk, aux

  def hooks(self, trainables: Params, batch_size: int,
            rng: Optional[Array] = None, deterministic: bool = True,
            batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    return self.hooks_and_losses(trainables, batch_size, rng, deterministic, batch)[0]

  # ---- the objective ----

  def objective(self, task_loss: Array, metrics: dict, aux_loss: Optional[Array],
                trainables: Params, frozen: Params, batch: Mapping[str, Array],
                outputs: Any, rng: Optional[Array], deterministic: bool):
    """task loss + auxiliary losses + loss terms; returns (objective, metrics)."""
    objective = task_loss
    if aux_loss is not None:
      metrics["aux_loss"] = aux_loss
      objective = objective + aux_loss
    for term in self.loss_terms:
      value, term_metrics = term(self, trainables, frozen, batch, outputs, rng,
                                 deterministic)
      metrics.update(term_metrics)
      objective = objective + value
    return objective, metrics


def split_rng(rng: Optional[Array], count: int) -> list[Optional[Array]]:
  """`count` keys from `rng`, or Nones (deterministic calls)."""
  return [None] * count if rng is None else list(jax.random.split(rng, count))


def dropout_rngs(rng: Optional[Array]) -> dict:
  return {} if rng is None else {"dropout": rng}
