"""MPT's two stages as runs: source distillation, then target adaptation.

Stage one trains an `mpt.MPT` student on K source tasks with prompt
distillation from K single-task teacher prompts (the loss term
`losses.PromptDistillation`, added to the seq2seq objective); stage two
adapts a new MPT from the stage-one export. Both call `run.train`.

Dimension letters: K tasks, Pt teacher prompt length, H embed width.
"""
from __future__ import annotations

import functools
import os
from typing import Optional, Sequence

from ptuning_jax import models
from ptuning_jax.methods import common
from ptuning_jax.methods import initializers
from ptuning_jax.methods import mpt
from ptuning_jax.models import losses
from ptuning_jax.training import checkpoints


# ------------------------------ distillation --------------------------------


def distillation(teacher_files: Sequence[str], weight: float = 1.0,
                 temperature: float = 1.0) -> losses.PromptDistillation:
  """MPT's stage-one loss term from K teacher prompt files ([Pt, H] `.npy`
  each, in task-index order): gin binds it as
  `models.build.loss_terms = [@mpt_recipe.distillation()]`."""
  teachers = losses.load_teachers(list(teacher_files), None, checkpoints.load_npy)
  return losses.PromptDistillation(teachers, weight=weight, temperature=temperature)


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
  model = functools.partial(models.build, loss_terms=[
      distillation(teacher_files, weight=weight, temperature=temperature)])
  result = run_lib.train(model_dir=model_dir, method=method, model=model,
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
