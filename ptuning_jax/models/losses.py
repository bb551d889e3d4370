"""Losses: token cross-entropy, classification and regression losses, and
prompt distillation as an objective term.

Dimension letters: B batch, S target length, V vocabulary, C classes or
choices, K tasks, Pt teacher prompt length, T input length, H hidden width.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import common
from ptuning_jax.methods import placements

Array = jax.Array
TASK_INDEX = "task_index"


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


def classification(logits: Array, labels: Array, weights: Array):
  """Softmax cross-entropy over classes (or choices).

  Args:
    logits: [B, C].
    labels: [B] int class indices.
    weights: [B] example weights (0 for padding rows).
  Returns:
    (sum of weighted losses, number of correct weighted examples).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, C]
  per_example = -jnp.take_along_axis(
      log_probs, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]  # [B]
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return jnp.sum(per_example * weights), jnp.sum(correct * weights)


def squared_error(predictions: Array, targets: Array, weights: Array) -> Array:
  """Sum of weighted squared errors; predictions, targets, weights [B]."""
  diff = predictions.astype(jnp.float32) - targets.astype(jnp.float32)
  return jnp.sum(jnp.square(diff) * weights)


# ----------------------------------------------------- prompt distillation


def distillation_losses(student: Any, teacher: Any, batch: Mapping[str, Array],
                        temperature: float) -> tuple[Array, Array]:
  """(L_Logits, L_Hidden) of one batch (MPT's prompt distillation).

  Args:
    student: seq2seq outputs (`logits` [B, S, V], `encoded` [B, Ps + T, H],
      `decoded` [B, S, H]).
    teacher: the same with the teacher prompt (length Pt).
    batch: for the input mask (encoder_input_tokens [B, T]) and
      decoder_loss_weights [B, S].
    temperature: T of both output distributions.
  Returns:
    KL(teacher || student) per target token (weighted mean), and the mean
    squared hidden-state difference over input positions and target
    positions (each position's H values averaged). Both prompts must be
    prefixes: the input positions are the last T of each encoder output.
  """
  weights = batch["decoder_loss_weights"].astype(jnp.float32)  # [B, S]
  log_s = jax.nn.log_softmax(student.logits.astype(jnp.float32) / temperature, -1)
  log_t = jax.nn.log_softmax(teacher.logits.astype(jnp.float32) / temperature, -1)
  kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), -1)  # [B, S]
  kl = jnp.sum(kl * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  length = batch["encoder_input_tokens"].shape[1]
  in_mask = (batch["encoder_input_tokens"] > 0).astype(jnp.float32)  # [B, T]
  enc_se = jnp.mean(jnp.square(student.encoded[:, -length:].astype(jnp.float32)
                               - teacher.encoded[:, -length:].astype(jnp.float32)), -1)
  dec_se = jnp.mean(jnp.square(student.decoded.astype(jnp.float32)
                               - teacher.decoded.astype(jnp.float32)), -1)  # [B, S]
  hidden = ((jnp.sum(enc_se * in_mask) + jnp.sum(dec_se * weights))
            / jnp.maximum(jnp.sum(in_mask) + jnp.sum(weights), 1.0))
  return kl, hidden


@dataclasses.dataclass(frozen=True, eq=False)
class PromptDistillation:
  """`weight * (L_Logits + L_Hidden)` from per-task teacher prompts.

  The teacher of an example is `teachers[task_index]`, placed as a prefix of
  the input through the same frozen backbone, without gradients. A loss term
  of `seq2seq.Seq2SeqModel` (its `loss_terms`); MPT's stage one uses it.

  Attributes:
    teachers: [K, Pt, H] float32 teacher prompts, one per task.
    weight: lambda.
    temperature: T.
  """
  teachers: Any
  weight: float = 1.0
  temperature: float = 1.0

  def __post_init__(self):
    if self.temperature <= 0:
      raise ValueError(f"PromptDistillation.temperature={self.temperature} must be > 0.")

  def teacher_hooks(self, spec: hooks_lib.HookSpec,
                    batch: Mapping[str, Array]) -> hooks_lib.Hooks:
    """Each example's teacher prompt [B, Pt, H] before its input."""
    if TASK_INDEX not in batch:
      raise ValueError(f"Prompt distillation needs the batch feature {TASK_INDEX!r} "
                       f"[B] to pick each example's teacher; batch has {sorted(batch)}.")
    teachers = jnp.asarray(self.teachers, jnp.float32)  # [K, Pt, H]
    prompt = common.select_tasks(teachers, batch[TASK_INDEX], "teacher prompts")  # [B, Pt, H]
    return hooks_lib.Hooks(inputs={spec.input_stack: (
        lambda x, tokens, mask: placements.prefix(prompt, x, tokens, mask))})

  def check(self, spec: hooks_lib.HookSpec, method: Any) -> None:
    """The student must be a prefix prompt of the teachers' width, one task
    per teacher (checked when the model is built, and again when traced)."""
    teachers = np.shape(self.teachers)
    if teachers[2] != spec.embed_dim:
      raise ValueError(f"Prompt distillation: teacher prompts [K, Pt, H] = {teachers} "
                       f"do not fit the backbone's embed width {spec.embed_dim}.")
    num_tasks = getattr(method, "num_tasks", None)
    if num_tasks is not None and num_tasks != teachers[0]:
      raise ValueError(f"Prompt distillation: {teachers[0]} teacher prompts for a "
                       f"method with num_tasks={num_tasks}.")
    placement = getattr(method, "placement", "prefix")
    if placement != "prefix":
      raise ValueError(f"Prompt distillation needs the student's placement='prefix'; "
                       f"the method has {placement!r}.")

  def __call__(self, model, trainables, frozen, batch, outputs, rng, deterministic):
    del rng
    self.check(model.spec, model.method)
    teacher = model.forward(model.backbone_params(trainables, frozen), batch,
                            self.teacher_hooks(model.spec, batch), deterministic=True)
    teacher = jax.lax.stop_gradient(teacher)
    kl, hidden = distillation_losses(outputs, teacher, batch, self.temperature)
    del deterministic
    return self.weight * (kl + hidden), {"distill_kl": kl, "distill_hidden": hidden}


def load_teachers(teacher_files: Sequence[str], embed_dim: Optional[int],
                  load_npy) -> np.ndarray:
  """Stacks K teacher prompt files ([Pt, H] each) into [K, Pt, H] float32
  (`load_npy(path, dtype)` reads one; H is checked when `embed_dim` is given)."""
  if not teacher_files:
    raise ValueError("Prompt distillation: teacher_files is empty; give one prompt "
                     ".npy per source task, in task-index order.")
  arrays = [load_npy(f, np.float32) for f in teacher_files]
  for f, a in zip(teacher_files, arrays):
    if a.ndim != 2 or a.shape != arrays[0].shape or a.shape[1] != (embed_dim or a.shape[1]):
      raise ValueError(f"Teacher prompt {f} has shape {a.shape}; all teachers must be "
                       f"[Pt, H={embed_dim}] of one length (first: {arrays[0].shape}).")
  return np.stack(arrays)
