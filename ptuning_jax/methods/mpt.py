"""MPT: multitask prompt tuning (Wang et al., ICLR 2023).

Prompt decomposition. Task k's prompt is a shared prompt P* times a rank-r
(the paper: rank-one) task-specific matrix, elementwise:

  prompt_k = P* (elementwise) (U_k @ V_k)    P*: [P, H], U_k: [P, r], V_k: [r, H]

(the paper's u_k v_k^T for r = 1). Parameter names follow Hugging Face
PEFT's `MultitaskPromptEmbedding`: `prompt` (PEFT `embedding.weight`),
`prefix_task_cols` [K, P, r] and `prefix_task_rows` [K, r, H], both
N(0, 0.02) at random init. Trainable parameters: P H + K r (P + H); the
target stage (K = 1, r = 1) at T5-Base, P = 100: 77,668 (the paper's 0.035%).

Two stages:
  1. Source training (`run_stage_one`): K source tasks, each example with its
     `task_index` [B], and a prompt-tuned single-task teacher prompt per task
     (`.npy` files). `DistillationModel` adds prompt distillation to the
     student's cross-entropy,
       L = L_PLM + lambda (L_Logits + L_Hidden),
     L_Logits = KL(teacher || student) of the temperature-T output
     distributions per target token, L_Hidden = mean squared difference of
     the final encoder hidden states (input positions) and final decoder
     hidden states. The teachers run through the same frozen backbone inside
     the loss, without gradients. (The formula is the paper's; lambda and T
     are not confirmed from the paper text here: defaults 1.0, 1.0,
     configurable. L_Hidden is a mean, not a sum. PEFT implements no
     distillation loss, only the decomposition.)
  2. Target adaptation (`run_stage_two`): a new `MPT` (usually K = 1) whose
     P* and factors start from the source run, by PEFT's init modes
     (`MultitaskPromptTuningInit`): "RANDOM" (P* from `initializer`, default
     N(0, 1); factors N(0, 0.02)), "TEXT" (P* = embeddings of `prompt_text`'s
     pieces plus EOS, repeated to P, as PEFT's tokenizer call gives),
     "AVERAGE_SOURCE_TASKS" (source P*, factors averaged over the source
     tasks), "EXACT_SOURCE_TASK" (source P*, the factors of `source_task`),
     "ONLY_SOURCE_SHARED" (source P*, fresh random factors). A source is an
     `.npy` export directory of a stage-one checkpoint (`prompt.npy`,
     `prefix_task_cols.npy`, `prefix_task_rows.npy`) or a PEFT
     `.safetensors` adapter (its first P prompt rows; PEFT seq2seq stores 2 P).

PEFT's seq2seq default also prepends task prompt rows [P, 2 P) to the
decoder input (`decoder_length=P`; off by default, as in the paper).

Task selection: `task_index` [B] from the batch; with K = 1 it may be absent
(task 0). An index outside [0, K) raises for a concrete batch and gives a NaN
prompt (so a NaN loss) inside `jit`.

Dimension letters: B batch, K tasks, P prompt length, r rank, H embed width,
T input length, S target length, V vocabulary.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax.training import checkpoints
from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import initializers
from ptuning_jax.methods import placements
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.backbones import t5
from ptuning_jax.methods import common

Array = jax.Array

INIT_MODES = ("RANDOM", "TEXT", "AVERAGE_SOURCE_TASKS", "EXACT_SOURCE_TASK",
              "ONLY_SOURCE_SHARED")
SOURCE_MODES = INIT_MODES[2:]
TASK_INDEX = "task_index"
PROMPT, COLS, ROWS = "prompt", "prefix_task_cols", "prefix_task_rows"
COLS_AXES = ("tasks", "prompt", "prompt_rank")  # [K, P, r]
ROWS_AXES = ("tasks", "prompt_rank", "prompt_embed")  # [K, r, H]
# PEFT adapter keys of the same tensors.
PEFT_KEYS = {PROMPT: "prompt_embeddings", COLS: COLS, ROWS: ROWS}


# ------------------------------ sources -------------------------------------


def load_source(path: str, length: int) -> dict[str, np.ndarray]:
  """A stage-one result: {prompt [P, H], prefix_task_cols [K, P, r],
  prefix_task_rows [K, r, H]} float32.

  Args:
    path: an `.npy` export directory of an MPT checkpoint, or a PEFT
      `.safetensors` adapter file (its first `length` prompt rows are used).
    length: rows of P* expected by the target method (P + Pd).
  """
  if str(path).endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    if not os.path.exists(path):
      raise FileNotFoundError(f"MPT source {path} does not exist.")
    raw = load_file(path)
    missing = [k for k in PEFT_KEYS.values() if k not in raw]
    if missing:
      raise ValueError(f"MPT source {path} lacks {missing}; has {sorted(raw)}.")
    source = {name: np.asarray(raw[key], np.float32) for name, key in PEFT_KEYS.items()}
    source[PROMPT] = source[PROMPT][:length]
    source[COLS] = source[COLS][:, :length]
  else:
    source = {name: checkpoints.load_npy(os.path.join(path, f"{name}.npy"), np.float32)
              for name in (PROMPT, COLS, ROWS)}
  _check_source(path, source, length)
  return source


def _check_source(path: str, source: Mapping[str, np.ndarray], length: int) -> None:
  prompt, cols, rows = source[PROMPT], source[COLS], source[ROWS]
  ok = (prompt.ndim == 2 and cols.ndim == 3 and rows.ndim == 3
        and prompt.shape[0] == length == cols.shape[1]
        and cols.shape[0] == rows.shape[0] and cols.shape[2] == rows.shape[1]
        and rows.shape[2] == prompt.shape[1])
  if not ok:
    raise ValueError(
        f"MPT source {path}: shapes prompt {prompt.shape}, {COLS} {cols.shape}, "
        f"{ROWS} {rows.shape} do not form [P={length}, H], [K, P, r], [K, r, H].")


def _source_init(method: "MPT", name: str) -> initializers.Initializer:
  """Initialiser of parameter `name` from `method.source` by its init mode."""
  def init(rng, shape, context):
    del rng, context
    source = load_source(method.source, method.total_rows)
    value = source[name]
    if name != PROMPT:
      if method.init_mode == "AVERAGE_SOURCE_TASKS":
        value = value.mean(0, keepdims=True)
      else:  # EXACT_SOURCE_TASK
        if not 0 <= method.source_task < value.shape[0]:
          raise ValueError(f"MPT.source_task={method.source_task} outside the "
                           f"{value.shape[0]} source tasks of {method.source}.")
        value = value[method.source_task][None]
      value = np.broadcast_to(value, (shape[0],) + value.shape[1:])
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f"MPT: source {name} from {method.source} has shape "
                       f"{value.shape}; the method needs {tuple(shape)} (rank, H).")
    return jnp.asarray(value, jnp.float32)
  return init


def text_with_eos(prompt_text: str) -> initializers.Initializer:
  """PEFT's TEXT init: the ids of `prompt_text` plus EOS (a T5 tokenizer call
  appends it), repeated and truncated to P rows of the embedding table."""
  def init(rng, shape, context):
    del rng
    table = context.require_embedding("MPT TEXT init")
    vocab = context.require_vocab("MPT TEXT init")
    ids = list(vocab.encode(prompt_text)) + [vocab.eos_id]
    if max(ids) >= table.shape[0]:
      raise ValueError(f"MPT TEXT init: {prompt_text!r} has ids beyond the embedding "
                       f"table ({max(ids)} >= {table.shape[0]}).")
    ids = (ids * math.ceil(shape[0] / len(ids)))[:shape[0]]
    return jnp.asarray(table[np.asarray(ids)], jnp.float32)  # [P, H]
  return init


# ------------------------------ the method ----------------------------------


def task_prompts(prompt: Array, cols: Array, rows: Array, index: Array) -> Array:
  """P* (elementwise) U_k V_k per example.

  Args:
    prompt: [P, H] shared prompt P*.
    cols: [K, P, r].
    rows: [K, r, H].
    index: [B] task indices.
  Returns:
    [B, P, H] float32.
  """
  u = common.select_tasks(cols.astype(jnp.float32), index, "MPT")  # [B, P, r]
  v = common.select_tasks(rows.astype(jnp.float32), index, "MPT")  # [B, r, H]
  return prompt.astype(jnp.float32)[None] * jnp.einsum("bpr,brh->bph", u, v)


class MPT(nn.Module):
  """Shared prompt with per-task multiplicative low-rank updates.

  Attributes:
    spec: the backbone's hook spec (`embed_dim` H).
    num_tasks: K (source tasks in stage one; usually 1 in stage two).
    length: P.
    rank: r (the paper: 1; PEFT `num_ranks`).
    init_mode: one of INIT_MODES (PEFT's names and semantics).
    initializer: P* for "RANDOM" (default N(0, 1), PEFT's embedding init).
    prompt_text: the text of "TEXT".
    source: stage-one result for the source modes (see `load_source`).
    source_task: the source task of "EXACT_SOURCE_TASK".
    factor_stddev: std of the random factors (PEFT: 0.02).
    placement: prompt placement (`placements.PLACEMENTS`).
    decoder_length: Pd > 0 adds Pd rows to P*, U_k (all [P + Pd, ...])
      whose task prompt rows [P, P + Pd) are prepended to the decoder input
      (the decoder `prefix` hook): PEFT's seq2seq default
      (`num_transformer_submodules=2`) is Pd = P. Default 0 (the paper:
      encoder prompt only).
  """
  spec: hooks_lib.HookSpec
  num_tasks: int = 1
  length: int = 100
  rank: int = 1
  init_mode: str = "RANDOM"
  initializer: initializers.Initializer = dataclasses.field(
      default_factory=lambda: initializers.normal(1.0))
  prompt_text: str = ""
  source: Optional[str] = None
  source_task: int = 0
  factor_stddev: float = 0.02
  placement: str = "prefix"
  decoder_length: int = 0

  def _check(self) -> None:
    common.check_positive("MPT", num_tasks=self.num_tasks, length=self.length,
                          rank=self.rank)
    common.check_choice("MPT", "init_mode", self.init_mode, INIT_MODES)
    if self.init_mode in SOURCE_MODES and not self.source:
      raise ValueError(f"MPT(init_mode={self.init_mode!r}) needs `source` (a stage-one "
                       ".npy export directory or a PEFT .safetensors adapter).")
    if self.init_mode == "TEXT" and not self.prompt_text:
      raise ValueError("MPT(init_mode='TEXT') needs a non-empty `prompt_text`.")
    if self.decoder_length < 0:
      raise ValueError(f"MPT.decoder_length={self.decoder_length} must be >= 0.")

  @property
  def total_rows(self) -> int:
    """P + Pd, the rows of P* and U_k."""
    return self.length + self.decoder_length

  def _initializers(self) -> tuple[initializers.Initializer, ...]:
    shared = {"RANDOM": self.initializer,
              "TEXT": text_with_eos(self.prompt_text)}.get(self.init_mode)
    random = initializers.normal(self.factor_stddev)
    if self.init_mode in SOURCE_MODES:
      shared = _source_init(self, PROMPT)
    if self.init_mode in ("AVERAGE_SOURCE_TASKS", "EXACT_SOURCE_TASK"):
      return shared, _source_init(self, COLS), _source_init(self, ROWS)
    return shared, random, random

  @nn.compact
  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    del deterministic
    self._check()
    embed, k, p, r = (self.spec.embed_dim, self.num_tasks, self.total_rows,
                     self.rank)
    shared_init, cols_init, rows_init = self._initializers()
    prompt = initializers.prompt_param(self, PROMPT, shared_init, (p, embed), context)
    cols = initializers.prompt_param(self, COLS, cols_init, (k, p, r), context, COLS_AXES)
    rows = initializers.prompt_param(self, ROWS, rows_init, (k, r, embed), context, ROWS_AXES)
    combine = placements.get_placement(self.placement)
    index = _task_index(batch, k, self.is_initializing(), batch_size)
    full = task_prompts(prompt, cols, rows, index)  # [B, P + Pd, H]
    input_prompt = full[:, :self.length]  # [B, P, H]

    def inputs(x, tokens, mask):
      if x.shape[0] != input_prompt.shape[0]:
        raise ValueError(f"MPT: hooks built for batch size {input_prompt.shape[0]} "
                         f"got inputs of batch size {x.shape[0]}.")
      return combine(input_prompt, x, tokens, mask)

    hooks = common.input_hooks(self.spec, inputs)
    if self.decoder_length:
      hooks = hooks.merge(hooks_lib.Hooks(prefix={
          self.spec.stack("decoder").name: full[:, self.length:]}))
    return hooks


def _task_index(batch: Optional[Mapping[str, Array]], num_tasks: int,
                initializing: bool, batch_size: int) -> Array:
  """[B] task indices from `batch`; zeros at init or when K = 1 without one."""
  if batch is not None and TASK_INDEX in batch:
    index = jnp.asarray(batch[TASK_INDEX])
    if tuple(index.shape) != (batch_size,):
      raise ValueError(f"MPT: batch feature {TASK_INDEX!r} has shape "
                       f"{tuple(index.shape)}; expected [B={batch_size}].")
    return index
  if num_tasks > 1 and not initializing:
    raise ValueError(f"MPT(num_tasks={num_tasks}) needs the batch feature "
                     f"{TASK_INDEX!r} [B]; the method got "
                     f"{'no batch' if batch is None else sorted(batch)}.")
  return jnp.zeros((batch_size,), jnp.int32)


def num_params(d_model: int, length: int, num_tasks: int = 1, rank: int = 1,
               decoder_length: int = 0) -> int:
  """The formula P H + K r (P + H), with P + Pd rows for P."""
  rows = length + decoder_length
  return rows * d_model + num_tasks * rank * (rows + d_model)


def fold(method: MPT, params: Any,
         task: Optional[int] = None) -> tuple[prompt_tuning.SoftPrompt, Any]:
  """Task `task`'s prompt P* (elementwise) U_k V_k as a plain `SoftPrompt`
  with identical outputs for that task (for inference on one task, or to
  start another method from it). `task` may be omitted when K = 1."""
  if task is None:
    if method.num_tasks != 1:
      raise ValueError(f"mpt.fold: MPT(num_tasks={method.num_tasks}) folds one task "
                       "at a time; pass task=k.")
    task = 0
  if not 0 <= task < method.num_tasks:
    raise ValueError(f"mpt.fold: task={task} outside [0, {method.num_tasks}).")
  params = nn.meta.unbox(params)
  prompt = task_prompts(params[PROMPT], params[COLS], params[ROWS],
                        jnp.asarray([task]))[0]  # [P + Pd, H]
  folded = prompt_tuning.SoftPrompt(spec=method.spec,
                              length=method.length, placement=method.placement,
                              initializer=initializers.normal(),
                              decoder_length=method.decoder_length)
  out = {"prompt": prompt[:method.length]}
  if method.decoder_length:
    out["decoder_prompt"] = prompt[method.length:]
  return folded, out


def source_length(source: str) -> int:
  """P of a stage-one `.npy` export (a PEFT adapter's P must be given)."""
  if str(source).endswith(".safetensors"):
    raise ValueError(f"MPT source {source}: give the prompt length for a PEFT adapter "
                     "(PEFT seq2seq adapters store 2 P prompt rows).")
  return int(checkpoints.load_npy(os.path.join(source, f"{PROMPT}.npy")).shape[0])
