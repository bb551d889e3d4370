"""Multi-task prompts: a shared prompt plus a task-specific one per task.

The prompt-tuning repository's extended multi-task prompts
(`AddMultiTaskPrompt`, `ConcatMultiTaskPrompt`): every task k has its own
prompt T_k, combined with a prompt S shared by all tasks,

  add:     prompt_b = S + T_{k_b}              S, T_k: [P, H]
  concat:  prompt_b = [S; T_{k_b}]             S: [Ps, H], T_k: [Pt, H]

where k_b is example b's task index. It comes either from the batch feature
`task_index` [B] ("batch", the default) or, as in the prompt-tuning
repository, from the first input token, which is then removed
("first_token": token `task_token_ids[k]` selects task k). Decode and rank
evaluation pass only input tokens to the method, so evaluate a "batch"
model by loss, or use "first_token" tasks.

An index outside [0, num_tasks) cannot raise inside `jit`; it turns that
example's prompt into NaN (so the loss is NaN, never silently wrong). With a
concrete (non-traced) batch it raises a ValueError.

Trainable parameters: add (1 + K) P H; concat Ps H + K Pt H.

Dimension letters: B batch, K tasks, P / Ps / Pt prompt lengths, H embed width,
T input length.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import initializers
from ptuning_jax.methods import placements
from ptuning_jax.methods import common

Array = jax.Array

COMBINES = ("add", "concat")
TASK_INDEX_SOURCES = ("batch", "first_token")
TASK_INDEX = "task_index"


class MultiTaskPrompt(nn.Module):
  """Shared + task-specific prompts selected per example.

  Attributes:
    spec: the backbone's hook spec (`embed_dim` H).
    num_tasks: K.
    length: P (add) or Ps (concat), the shared prompt's length.
    task_length: Pt (concat only; default `length`).
    combine: "add" or "concat".
    task_index_source: "batch" (feature `task_index` [B]) or "first_token".
    task_token_ids: for "first_token": the token id of each task, in order.
    shared_initializer: of S (default sampled vocabulary).
    task_initializer: a [Pt, H] initialiser applied to each T_k (own random
      key per task); default zeros for "add" (training starts from the shared
      prompt) and sampled vocabulary for "concat".
    placement: prompt placement (`placements.PLACEMENTS`).
  """
  spec: hooks_lib.HookSpec
  num_tasks: int = 2
  length: int = 100
  task_length: Optional[int] = None
  combine: str = "add"
  task_index_source: str = "batch"
  task_token_ids: Sequence[int] = ()
  shared_initializer: initializers.Initializer = dataclasses.field(
      default_factory=initializers.sampled_vocab)
  task_initializer: Optional[initializers.Initializer] = None
  placement: str = "prefix"

  def _check(self) -> None:
    common.check_positive("MultiTaskPrompt", num_tasks=self.num_tasks,
                          length=self.length)
    common.check_choice("MultiTaskPrompt", "combine", self.combine, COMBINES)
    common.check_choice("MultiTaskPrompt", "task_index_source",
                        self.task_index_source, TASK_INDEX_SOURCES)
    if self.combine == "add" and self.task_length not in (None, self.length):
      raise ValueError(f"MultiTaskPrompt: combine='add' needs task_length == length "
                       f"({self.length}); got task_length={self.task_length}.")
    if self.task_index_source == "first_token" and (
        len(self.task_token_ids) != self.num_tasks
        or len(set(self.task_token_ids)) != self.num_tasks):
      raise ValueError(f"MultiTaskPrompt: task_index_source='first_token' needs "
                       f"num_tasks={self.num_tasks} distinct task_token_ids; got "
                       f"{tuple(self.task_token_ids)}.")

  def _task_init(self) -> initializers.Initializer:
    if self.task_initializer is not None:
      return per_task(self.task_initializer)
    if self.combine == "add":
      return initializers.normal(0.0)
    return per_task(initializers.sampled_vocab())

  @nn.compact
  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    del deterministic
    self._check()
    embed = self.spec.embed_dim
    task_length = self.task_length or self.length
    shared = initializers.prompt_param(self, "shared_prompt", self.shared_initializer,
                                  (self.length, embed), context)  # [Ps, H]
    tasks = initializers.prompt_param(self, "task_prompts", self._task_init(),
                                 (self.num_tasks, task_length, embed), context,
                                 ("tasks", "prompt", "prompt_embed"))  # [K, Pt, H]
    combine_inputs = placements.get_placement(self.placement)
    initializing = self.is_initializing()
    source, combine, token_ids = (self.task_index_source, self.combine,
                                  tuple(self.task_token_ids))

    def inputs(x, tokens, mask):
      if source == "first_token":
        index = index_from_first_token(tokens, token_ids)
        x, tokens, mask = x[:, 1:], tokens[:, 1:], mask[:, 1:]  # [B, T - 1, ...]
      elif batch is None or TASK_INDEX not in batch:
        if not initializing:
          raise ValueError(
              f"MultiTaskPrompt(task_index_source='batch') needs the batch feature "
              f"{TASK_INDEX!r} [B]; the method got "
              f"{'no batch' if batch is None else sorted(batch)}. With seqio data "
              "set SeqioData.task_index, or use task_index_source='first_token'.")
        index = jnp.zeros((x.shape[0],), jnp.int32)
      else:
        index = batch[TASK_INDEX]
        if tuple(index.shape) != (x.shape[0],):
          raise ValueError(f"MultiTaskPrompt: batch feature {TASK_INDEX!r} has shape "
                           f"{tuple(index.shape)}; expected [B={x.shape[0]}].")
      prompt = combine_prompts(shared, tasks, index, combine)  # [B, P', H]
      return combine_inputs(prompt, x, tokens, mask)

    return common.input_hooks(self.spec, inputs)


def per_task(init: initializers.Initializer) -> initializers.Initializer:
  """A [P, H] initialiser applied to each of K tasks: shape [K, P, H]."""
  def task_init(rng, shape, context):
    keys = jax.random.split(rng, shape[0])
    return jnp.stack([init(keys[k], tuple(shape[1:]), context)
                      for k in range(shape[0])])  # [K, Pt, H]
  return task_init


def index_from_first_token(tokens: Array, task_token_ids: Sequence[int]) -> Array:
  """tokens [B, T] -> [B] index k of `task_token_ids[k] == tokens[:, 0]`, or -1."""
  ids = jnp.asarray(np.asarray(task_token_ids, np.int32))  # [K]
  hits = tokens[:, :1] == ids[None]  # [B, K]
  return jnp.where(hits.any(-1), jnp.argmax(hits, -1), -1)


def combine_prompts(shared: Array, tasks: Array, index: Array, combine: str) -> Array:
  """Per-example prompts.

  Args:
    shared: [Ps, H].
    tasks: [K, Pt, H].
    index: [B] int task indices.
    combine: "add" or "concat".
  Returns:
    [B, Ps, H] (add) or [B, Ps + Pt, H] (concat); NaN rows for bad indices.
  """
  num_tasks = tasks.shape[0]
  index = jnp.asarray(index)
  if index.ndim != 1:
    raise ValueError(f"MultiTaskPrompt: task_index must be [B]; got shape {index.shape}.")
  try:
    concrete = np.asarray(index)
  except jax.errors.TracerArrayConversionError:
    concrete = None  # inside jit: bad indices give NaN prompts below
  if concrete is not None:
    bad = concrete[(concrete < 0) | (concrete >= num_tasks)]
    if bad.size:
      raise ValueError(f"MultiTaskPrompt: task_index values {sorted(set(bad.tolist()))} "
                       f"outside [0, num_tasks={num_tasks}) (-1: the first input "
                       "token is none of task_token_ids).")
  valid = (index >= 0) & (index < num_tasks)
  task = jnp.take(tasks, jnp.clip(index, 0, num_tasks - 1), axis=0)  # [B, Pt, H]
  task = jnp.where(valid[:, None, None], task, jnp.nan)
  if combine == "add":
    return shared[None] + task
  return jnp.concatenate([common.broadcast_batch(shared, task.shape[0]), task], 1)


def num_params(d_model: int, num_tasks: int, length: int,
               task_length: Optional[int] = None) -> int:
  """The formula: (1 + K) P H (add) or Ps H + K Pt H (concat)."""
  task_length = task_length or length
  return length * d_model + num_tasks * task_length * d_model
