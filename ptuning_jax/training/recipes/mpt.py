"""MPT's two stages as runs: source distillation, then target adaptation.

Stage one trains an `mpt.MPT` student on K source tasks with prompt
distillation from K single-task teacher prompts; stage two adapts a new MPT
from the stage-one export. Both call `run.train`.

Dimension letters: B batch, K tasks, Pt teacher prompt length, T input
length, S target length, H d_model, V vocabulary.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.backbones import t5
from ptuning_jax.methods import common
from ptuning_jax.methods import initializers
from ptuning_jax.methods import mpt
from ptuning_jax.methods import placements
from ptuning_jax.models import seq2seq
from ptuning_jax.training import checkpoints

Array = jax.Array
TASK_INDEX = mpt.TASK_INDEX


# ------------------------------ distillation --------------------------------


def _capture_stacks(module: nn.Module, method_name: str) -> bool:
  return method_name == "__call__" and isinstance(module, (t5.Encoder, t5.Decoder))


def forward_with_hidden(backbone: nn.Module, frozen: Any, batch: Mapping[str, Array],
                        hooks: hooks_lib.Hooks, deterministic: bool = True,
                        rngs: Optional[dict] = None) -> tuple[Array, Array, Array]:
  """Teacher-forced T5 pass that also returns the stacks' final hidden states.

  Returns:
    (logits [B, S, V], encoder output [B, T', H], decoder output [B, S, H]
    (the positions of a `decoder_prefix` dropped)).
  """
  logits, state = backbone.apply(
      {"params": frozen}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
      hooks=hooks, deterministic=deterministic, rngs=rngs or {},
      capture_intermediates=_capture_stacks, mutable=["intermediates"])
  found = state["intermediates"]
  if "encoder" not in found or "decoder" not in found:
    raise ValueError(f"mpt.MPT distillation needs a T5 backbone (encoder and decoder "
                     f"stacks); captured {sorted(found)}.")
  length = batch["decoder_input_tokens"].shape[1]
  decoded = found["decoder"]["__call__"][0][:, -length:]  # [B, S, H]
  return logits, found["encoder"]["__call__"][0], decoded


def distillation_losses(student: tuple[Array, Array, Array],
                        teacher: tuple[Array, Array, Array],
                        batch: Mapping[str, Array], temperature: float
                        ) -> tuple[Array, Array]:
  """(L_Logits, L_Hidden) of one batch.

  Args:
    student: (logits [B, S, V], encoder [B, Ps + T, H], decoder [B, S, H]).
    teacher: the same with the teacher prompt (length Pt).
    batch: for the input mask (encoder_input_tokens [B, T]) and
      decoder_loss_weights [B, S].
    temperature: T of both output distributions.
  Returns:
    KL(teacher || student) per target token (weighted mean), and the mean
    squared hidden-state difference over input positions and target
    positions (each position's H values averaged).
  """
  weights = batch["decoder_loss_weights"].astype(jnp.float32)  # [B, S]
  log_s = jax.nn.log_softmax(student[0].astype(jnp.float32) / temperature, -1)
  log_t = jax.nn.log_softmax(teacher[0].astype(jnp.float32) / temperature, -1)
  kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), -1)  # [B, S]
  kl = jnp.sum(kl * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  length = batch["encoder_input_tokens"].shape[1]
  in_mask = (batch["encoder_input_tokens"] > 0).astype(jnp.float32)  # [B, T]
  enc_se = jnp.mean(jnp.square(student[1][:, -length:].astype(jnp.float32)
                               - teacher[1][:, -length:].astype(jnp.float32)), -1)
  dec_se = jnp.mean(jnp.square(student[2].astype(jnp.float32)
                               - teacher[2].astype(jnp.float32)), -1)  # [B, S]
  hidden = ((jnp.sum(enc_se * in_mask) + jnp.sum(dec_se * weights))
            / jnp.maximum(jnp.sum(in_mask) + jnp.sum(weights), 1.0))
  return kl, hidden


@dataclasses.dataclass(frozen=True, eq=False)
class DistillationModel(seq2seq.PromptModel):
  """`PromptModel` whose training loss adds mpt.MPT's prompt distillation.

  Attributes (besides PromptModel's):
    teachers: [K, Pt, H] float32 teacher prompts, one per task (prefix).
    weight: lambda.
    temperature: T.
  The student method must place its prompt as a prefix (the encoder hidden
  states are compared at the input positions, the last T).
  """
  teachers: Any = None
  weight: float = 1.0
  temperature: float = 1.0

  def loss_fn(self, trainables, frozen, batch, rng=None, deterministic=True):
    method_rng = backbone_rng = None
    if rng is not None:
      method_rng, backbone_rng = jax.random.split(rng)
    tokens = batch["encoder_input_tokens"]
    hk, aux_loss = self.hooks_and_losses(trainables, tokens.shape[0], method_rng,
                                         deterministic, batch)
    rngs = {"dropout": backbone_rng} if backbone_rng is not None else {}
    student = forward_with_hidden(self.backbone, frozen, batch, hk, deterministic, rngs)
    teacher = jax.lax.stop_gradient(forward_with_hidden(
        self.backbone, frozen, batch, self.teacher_hooks(batch)))
    total, weight, correct = seq2seq.cross_entropy(
        student[0], batch["decoder_target_tokens"], batch["decoder_loss_weights"],
        self.z_loss, self.label_smoothing)
    denom = jnp.maximum(weight, 1.0)
    loss = total / denom
    kl, hidden = distillation_losses(student, teacher, batch, self.temperature)
    objective = loss + self.weight * (kl + hidden)
    metrics = {"loss": loss, "token_accuracy": correct / denom,
               "target_tokens": weight, "distill_kl": kl, "distill_hidden": hidden}
    if aux_loss is not None:
      metrics["aux_loss"] = aux_loss
      objective = objective + aux_loss
    return objective, metrics

  def teacher_hooks(self, batch: Mapping[str, Array]) -> hooks_lib.Hooks:
    """Each example's teacher prompt [B, Pt, H] before its input."""
    if TASK_INDEX not in batch:
      raise ValueError(f"mpt.MPT distillation needs the batch feature {TASK_INDEX!r} [B] "
                       f"to pick each example's teacher; batch has {sorted(batch)}.")
    teachers = jnp.asarray(self.teachers, jnp.float32)  # [K, Pt, H]
    prompt = mpt.select_tasks(teachers, batch[TASK_INDEX], "mpt.MPT teachers")  # [B, Pt, H]
    return hooks_lib.Hooks(
        encoder_inputs=lambda x, tokens, mask: placements.prefix(prompt, x, tokens, mask))


def load_teachers(teacher_files: Sequence[str], d_model: int) -> np.ndarray:
  """Stacks K teacher prompt files ([Pt, H] each) into [K, Pt, H] float32."""
  if not teacher_files:
    raise ValueError("mpt.MPT distillation: teacher_files is empty; give one prompt "
                     ".npy per source task, in task-index order.")
  arrays = [checkpoints.load_npy(f, np.float32) for f in teacher_files]
  for f, a in zip(teacher_files, arrays):
    if a.ndim != 2 or a.shape != arrays[0].shape or a.shape[1] != d_model:
      raise ValueError(f"mpt.MPT teacher {f} has shape {a.shape}; all teachers must be "
                       f"[Pt, H={d_model}] of one length (first: {arrays[0].shape}).")
  return np.stack(arrays)


def distillation_model(backbone: nn.Module, method: nn.Module, z_loss: float = 0.0, *,
                       teacher_files: Sequence[str], weight: float = 1.0,
                       temperature: float = 1.0) -> DistillationModel:
  """A `run.build_run` model factory for mpt.MPT's stage one (gin:
  `run.train.model_factory = @mpt.distillation_model`)."""
  teachers = load_teachers(teacher_files, method.backbone_config.d_model)
  num_tasks = getattr(method, "num_tasks", None)
  if num_tasks is not None and num_tasks != teachers.shape[0]:
    raise ValueError(f"mpt.MPT distillation: {teachers.shape[0]} teacher_files for a "
                     f"method with num_tasks={num_tasks}.")
  if getattr(method, "placement", "prefix") != "prefix":
    raise ValueError(f"mpt.MPT distillation needs placement='prefix'; the method has "
                     f"{method.placement!r}.")
  if temperature <= 0:
    raise ValueError(f"mpt.MPT distillation: temperature={temperature} must be > 0.")
  return DistillationModel(backbone, method, z_loss=z_loss, teachers=teachers,
                           weight=weight, temperature=temperature)


# ------------------------------ drivers -------------------------------------


def final_export_dir(model_dir: str, step: int) -> str:
  """The `.npy` export directory of `step` of a `run.train` run."""
  return os.path.join(model_dir, "checkpoints", checkpoints.NUMPY_DIR, str(int(step)))


def run_stage_one(*, model_dir: str, teacher_files: Sequence[str], length: int = 100,
                  rank: int = 1, weight: float = 1.0, temperature: float = 1.0,
                  initializer: Optional[initializers.Initializer] = None,
                  factor_stddev: float = 0.02, num_steps: int = 1000,
                  **train_kwargs) -> dict:
  """Source training: distils K teachers into P* and K rank-r factor pairs.

  Args:
    model_dir: run directory (checkpoints, metrics, `.npy` exports).
    teacher_files: one `.npy` prompt per source task, in task-index order;
      every training batch must carry `task_index` [B].
    length, rank: P and r of the student.
    weight, temperature: lambda and T of the distillation loss.
    initializer: of P* (default N(0, 1)).
    factor_stddev: std of the random factors (PEFT: 0.02).
    num_steps: training steps.
    **train_kwargs: the rest of `run.train`'s arguments (backbone, data,
      optimizer, mesh, ...).
  Returns:
    `run.train`'s metrics plus "source_dir", the export to give stage two.
  """
  from ptuning_jax.training import run as run_lib  # pylint: disable=g-import-not-at-top
  extra = {} if initializer is None else {"initializer": initializer}
  method = functools.partial(mpt.MPT, num_tasks=len(teacher_files), length=length,
                             rank=rank, init_mode="RANDOM", factor_stddev=factor_stddev,
                             **extra)
  factory = functools.partial(distillation_model, teacher_files=list(teacher_files),
                              weight=weight, temperature=temperature)
  result = run_lib.train(model_dir=model_dir, method=method, model_factory=factory,
                           num_steps=num_steps, **train_kwargs)
  return dict(result, source_dir=final_export_dir(model_dir, num_steps))


def run_stage_two(*, model_dir: str, source: str,
                  init_mode: str = "AVERAGE_SOURCE_TASKS", source_task: int = 0,
                  num_tasks: int = 1, length: Optional[int] = None,
                  num_steps: int = 1000, **train_kwargs) -> dict:
  """Target adaptation: trains P* and fresh (or source-initialised) factors.

  Args:
    model_dir: run directory.
    source: stage one's export directory (or a PEFT adapter file).
    init_mode: a source mode of INIT_MODES (the paper: averaged source
      factors).
    source_task: for "EXACT_SOURCE_TASK".
    num_tasks: target tasks (1: no `task_index` needed).
    length: P (default: the source's).
    num_steps: training steps.
    **train_kwargs: the rest of `run.train`'s arguments.
  Returns:
    `run.train`'s metrics plus "export_dir" (the final `.npy` export).
  """
  from ptuning_jax.training import run as run_lib  # pylint: disable=g-import-not-at-top
  common.check_choice("run_stage_two", "init_mode", init_mode, mpt.SOURCE_MODES)
  if length is None:
    length = mpt.source_length(source)
  rank = mpt.load_source(source, length)[mpt.COLS].shape[2]
  method = functools.partial(mpt.MPT, num_tasks=num_tasks, length=length, rank=rank,
                             init_mode=init_mode, source=source, source_task=source_task)
  result = run_lib.train(model_dir=model_dir, method=method, num_steps=num_steps,
                           **train_kwargs)
  return dict(result, export_dir=final_export_dir(model_dir, num_steps))
