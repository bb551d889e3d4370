"""Pure train/eval steps and the `Trainer` that jits them once with shardings.

Dimension letters: B global batch, M microbatches, T input length, S target
length, C candidates.

`TrainState` holds only what trains: the method's parameters, their optimizer
state, the step and the RNG. The frozen backbone parameters are passed to every
step separately and are never differentiated, updated or donated.
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

from ptuning_jax.models import seq2seq
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


def compute_gradients(model: seq2seq.PromptModel, params: Params, frozen: Params,
                      batch: Batch, rng: Array, num_microbatches: int = 1,
                      deterministic: bool = False):
  """Mean loss, metrics and gradients w.r.t. `params` only.

  With M > 1 microbatches the batch is processed M rows-blocks at a time in a
  `lax.scan`; every microbatch has the same number of rows, so the mean of the
  per-microbatch gradients is the full-batch gradient of the mean loss up to
  the token-count weighting, which we apply exactly by weighting with the
  microbatch's target-token count.
  """
  grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
  if num_microbatches == 1:
    (_, aux), grads = grad_fn(params, frozen, batch, rng, deterministic)
    return aux, grads

  micro = _split_microbatches(batch, num_microbatches)

  def body(carry, inputs):
    grad_sum, loss_sum, correct_sum, token_sum = carry
    index, mb = inputs
    (_, aux), grads = grad_fn(params, frozen, mb, jax.random.fold_in(rng, index),
                              deterministic)
    tokens = aux["target_tokens"]
    grad_sum = jax.tree_util.tree_map(lambda a, g: a + g * tokens, grad_sum, grads)
    return (grad_sum, loss_sum + aux["loss"] * tokens,
            correct_sum + aux["token_accuracy"] * tokens, token_sum + tokens), None

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  init = (zeros, 0.0, 0.0, 0.0)
  (grad_sum, loss_sum, correct_sum, tokens), _ = jax.lax.scan(
      body, init, (jnp.arange(num_microbatches), micro))
  denom = jnp.maximum(tokens, 1.0)
  grads = jax.tree_util.tree_map(lambda g: g / denom, grad_sum)
  return {"loss": loss_sum / denom, "token_accuracy": correct_sum / denom,
          "target_tokens": tokens}, grads


def train_step(state: TrainState, frozen: Params, batch: Batch, *,
               model: seq2seq.PromptModel, tx: optax.GradientTransformation,
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
              model: seq2seq.PromptModel):
  """Summed loss statistics over a batch (rows with zero weights add nothing)."""
  _, aux = model.loss_fn(params, frozen, batch, None, True)
  return aux


class Trainer:
  """Jits the steps once, with shardings over a `(data, model)` mesh.

  The trainable state is small (prompt tensors) and replicated; frozen params
  are sharded by their logical axes; batches are split over `data`.
  """

  def __init__(self, model: seq2seq.PromptModel, tx: optax.GradientTransformation,
               mesh: jax.sharding.Mesh, rules, frozen_shardings: Any,
               num_microbatches: int = 1, lr_fn=None, deterministic: bool = False):
    self.model, self.tx, self.mesh, self.rules = model, tx, mesh, rules
    self.frozen_shardings = frozen_shardings
    self.replicated = partitioning.replicated(mesh)
    # PartitionSpec("data"): leading (batch) axis over `data`, any rank, so
    # per-example features such as `task_index` [B] travel with the batch.
    batch_sh = partitioning.data_sharding(mesh, ndim=1)
    self.batch_sharding = batch_sh
    step = functools.partial(train_step, model=model, tx=tx,
                             num_microbatches=num_microbatches,
                             deterministic=deterministic, lr_fn=lr_fn)
    self._train_step = jax.jit(
        step, in_shardings=(self.replicated, frozen_shardings, batch_sh),
        out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))
    self._eval_step = jax.jit(
        functools.partial(eval_step, model=model),
        in_shardings=(self.replicated, frozen_shardings, batch_sh),
        out_shardings=self.replicated)
    self._predict_fns: dict = {}
    self._rank = jax.jit(
        model.rank_classify,
        in_shardings=(self.replicated, frozen_shardings, batch_sh, self.replicated),
        out_shardings=batch_sh)

  def _run(self, fn, *args, **kwargs):
    with partitioning.activate(self.mesh, self.rules):
      return fn(*args, **kwargs)

  def place_state(self, state: TrainState) -> TrainState:
    return jax.device_put(state, self.replicated)

  def place_batch(self, batch: Mapping[str, np.ndarray]) -> Batch:
    """Host-local rows [B / processes, ...] -> global arrays sharded over `data`."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding,
                                                      np.asarray(v))
            for k, v in batch.items()}

  def train_step(self, state: TrainState, frozen: Params, batch):
    return self._run(self._train_step, state, frozen, batch)

  def eval_step(self, params: Params, frozen: Params, batch):
    return self._run(self._eval_step, params, frozen, batch)

  def predict(self, params, frozen, batch, max_decode_length: int,
              eos_id: int = 1):
    """Greedy decodes [B, S]; one compilation per (length, eos id)."""
    key = (max_decode_length, eos_id)
    if key not in self._predict_fns:
      self._predict_fns[key] = jax.jit(
          functools.partial(self.model.predict_batch,
                            max_decode_length=max_decode_length, eos_id=eos_id),
          in_shardings=(self.replicated, self.frozen_shardings, self.batch_sharding),
          out_shardings=self.batch_sharding)
    return self._run(self._predict_fns[key], params, frozen, batch)

  def rank_classify(self, params, frozen, batch, candidates):
    return self._run(self._rank, params, frozen, batch, candidates)

  @property
  def train_step_cache_size(self) -> int:
    return self._train_step._cache_size()
