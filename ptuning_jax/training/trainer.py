"""Pure train/eval steps and the `Trainer` that jits them once with shardings.

Dimension letters: B global batch, M microbatches, T input length, S target
length, C candidates.

`TrainState` holds only what trains (the task model's trainable tree: the
method's parameters, a head's, the backbone's under full fine-tuning), their
optimizer state, the step and the RNG. The frozen backbone parameters are
passed to every step separately and are never differentiated, updated or
donated. Everything here works for any `models.task_model.TaskModel`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ptuning_jax.models import task_model
from ptuning_jax.training import partitioning

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]


@flax.struct.dataclass
class TrainState:
  """Attributes: step [], params (trainables), opt_state, rng: [2] uint32 key data."""
  step: Array
  params: Params
  opt_state: Any
  rng: Array


def create_train_state(trainables: Params, tx: optax.GradientTransformation,
                       seed: int) -> TrainState:
  params = nn.meta.unbox(trainables)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.key(seed)))


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"Batch size {x.shape[0]} is not divisible by "
                       f"num_microbatches={num_microbatches}.")
    return x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])
  return jax.tree_util.tree_map(split, batch)  # leaves [M, B / M, ...]


# Metrics that are sums over the batch (every other metric is a mean, and
# microbatches combine means weighted by their `target_tokens`).
SUMMED_METRICS = ("target_tokens",)


def compute_gradients(model: task_model.TaskModel, params: Params, frozen: Params,
                      batch: Batch, rng: Array, num_microbatches: int = 1,
                      deterministic: bool = False):
  """Metrics and gradients of the objective w.r.t. `params` only.

  With M > 1 microbatches the batch is processed M row-blocks at a time in a
  `lax.scan`. Every microbatch's gradient and every metric it reports (the
  task loss, token accuracy, auxiliary losses, loss-term metrics, ...) is
  weighted by its `target_tokens` and divided by their total, so the step
  equals the full-batch step and reports the same metrics; `target_tokens`
  itself is summed.
  """
  grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
  if num_microbatches == 1:
    (_, aux), grads = grad_fn(params, frozen, batch, rng, deterministic)
    return aux, grads

  micro = _split_microbatches(batch, num_microbatches)
  first = jax.tree_util.tree_map(lambda x: x[0], micro)
  metric_shapes = jax.eval_shape(
      lambda: grad_fn(params, frozen, first, rng, deterministic)[0][1])

  def body(carry, inputs):
    grad_sum, metric_sum = carry
    index, mb = inputs
    (_, aux), grads = grad_fn(params, frozen, mb, jax.random.fold_in(rng, index),
                              deterministic)
    tokens = aux["target_tokens"]
    grad_sum = jax.tree_util.tree_map(lambda a, g: a + g * tokens, grad_sum, grads)
    metric_sum = {k: metric_sum[k] + (v if k in SUMMED_METRICS else v * tokens)
                  for k, v in aux.items()}
    return (grad_sum, metric_sum), None

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  metric_zeros = {k: jnp.zeros(v.shape, jnp.float32) for k, v in metric_shapes.items()}
  (grad_sum, metric_sum), _ = jax.lax.scan(
      body, (zeros, metric_zeros), (jnp.arange(num_microbatches), micro))
  tokens = metric_sum["target_tokens"]
  denom = jnp.maximum(tokens, 1.0)
  grads = jax.tree_util.tree_map(lambda g: g / denom, grad_sum)
  return {k: v if k in SUMMED_METRICS else v / denom for k, v in metric_sum.items()}, grads


def train_step(state: TrainState, frozen: Params, batch: Batch, *,
               model: task_model.TaskModel, tx: optax.GradientTransformation,
               num_microbatches: int = 1, deterministic: bool = False,
               lr_fn: Optional[Callable[[Array], Array]] = None):
  """One optimizer step on the trainables. Returns (new state, metrics)."""
  aux, grads = compute_gradients(model, state.params, frozen, batch, step_rng(state),
                                 num_microbatches, deterministic)
  metrics = dict(aux, grad_norm=optax.global_norm(grads))
  if lr_fn is not None:
    metrics["learning_rate"] = lr_fn(state.step)
  return apply_gradients(state, grads, tx), metrics


def step_rng(state: TrainState) -> Array:
  """This step's key: the state's key folded with the step number."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def apply_gradients(state: TrainState, grads: Params,
                    tx: optax.GradientTransformation) -> TrainState:
  """The optimizer update of the trainables; the step advances by one."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def eval_step(params: Params, frozen: Params, batch: Batch, *,
              model: task_model.TaskModel):
  """Summed loss statistics over a batch (rows with zero weights add nothing)."""
  _, aux = model.loss_fn(params, frozen, batch, None, True)
  return aux


class Trainer:
  """Jits the steps once, with shardings over a `(data, model)` mesh.

  The trainable state is small (prompt tensors) and replicated; frozen params
  are sharded by their logical axes; batches are split over `data`. Any
  other method of the task model (decoding, rank classification, classifier
  outputs) is jitted once per static arguments by `call`.
  """

  def __init__(self, model: task_model.TaskModel, tx: optax.GradientTransformation,
               mesh: jax.sharding.Mesh, rules, frozen_shardings: Any,
               num_microbatches: int = 1, lr_fn=None, deterministic: bool = False):
    self.model, self.tx, self.mesh, self.rules = model, tx, mesh, rules
    self.frozen_shardings = frozen_shardings
    self.replicated = partitioning.replicated(mesh)
    # PartitionSpec("data"): leading (batch) axis over `data`, any rank, so
    # per-example features such as `task_index` [B] travel with the batch.
    self.batch_sharding = partitioning.data_sharding(mesh, ndim=1)
    step = functools.partial(train_step, model=model, tx=tx,
                             num_microbatches=num_microbatches,
                             deterministic=deterministic, lr_fn=lr_fn)
    self._train_step = jax.jit(
        step, in_shardings=(self.replicated, frozen_shardings, self.batch_sharding),
        out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))
    self._eval_step = jax.jit(
        functools.partial(eval_step, model=model),
        in_shardings=(self.replicated, frozen_shardings, self.batch_sharding),
        out_shardings=self.replicated)
    self._calls: dict = {}

  def _run(self, fn, *args, **kwargs):
    with partitioning.activate(self.mesh, self.rules):
      return fn(*args, **kwargs)

  def place_state(self, state: TrainState) -> TrainState:
    """The state on the mesh, replicated, never aliasing the caller's arrays
    (the step donates it)."""
    return jax.device_put(state, self.replicated, may_alias=False)

  def place_batch(self, batch: Mapping[str, np.ndarray]) -> Batch:
    """Host-local rows [B / processes, ...] -> global arrays sharded over `data`."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding,
                                                      np.asarray(v))
            for k, v in batch.items()}

  def train_step(self, state: TrainState, frozen: Params, batch):
    return self._run(self._train_step, state, frozen, batch)

  def eval_step(self, params: Params, frozen: Params, batch):
    return self._run(self._eval_step, params, frozen, batch)

  def call(self, name: str, params: Params, frozen: Params, batch, *extras,
           **static):
    """`model.<name>(params, frozen, batch, *extras, **static)`, jitted once
    per (name, static arguments): replicated params and extras, frozen and
    batch shardings in, outputs sharded over `data` (batch-major)."""
    key = (name, tuple(sorted(static.items())), len(extras))
    if key not in self._calls:
      fn = functools.partial(getattr(self.model, name), **static)
      self._calls[key] = jax.jit(
          fn, in_shardings=(self.replicated, self.frozen_shardings, self.batch_sharding)
          + (self.replicated,) * len(extras),
          out_shardings=self.batch_sharding)
    return self._run(self._calls[key], params, frozen, batch, *extras)

  @property
  def train_step_cache_size(self) -> int:
    return self._train_step._cache_size()
