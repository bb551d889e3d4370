"""Shared helpers of the method tests (imported by tests/methods/*_test.py).

Dimension letters: B batch, T input length, S target length.
"""
import functools

import flax.linen as nn
import jax
import numpy as np

from ptuning_jax import backbones
from ptuning_jax import models
from ptuning_jax import optimizers
from ptuning_jax import partitioning
from ptuning_jax import prompts
from ptuning_jax import synthetic
from ptuning_jax import t5
from ptuning_jax import task_data
from ptuning_jax import testing
from ptuning_jax import train as train_lib
from ptuning_jax import trainer as trainer_lib
from ptuning_jax import vocab as vocab_lib

B, T, S = 8, 7, 5


def config(**overrides) -> t5.T5Config:
  return testing.tiny_config(**overrides)


def make_batch(vocab_size: int, seed: int = 0, batch: int = B, length: int = T,
               target_length: int = S) -> dict:
  """Random ids with padding at the end of inputs and some targets."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab_size, (batch, length)).astype(np.int32)
  enc[:, -2:] = 0
  tgt = rng.integers(2, vocab_size, (batch, target_length)).astype(np.int32)
  tgt[::2, -1] = 0
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": (tgt > 0).astype(np.float32)}


def frozen(cfg: t5.T5Config, seed: int = 1):
  """(module, params) of a random tiny backbone."""
  return t5.T5(cfg), testing.init_params(cfg, seed=seed)


def context(params) -> prompts.InitContext:
  return prompts.InitContext(embedding=np.asarray(params["token_embedder"]["embedding"]),
                             vocab=vocab_lib.ByteVocab())


def init(method, params, seed: int = 0):
  """Unboxed trainables of `method` for the backbone `params`."""
  model = models.PromptModel(None, method)
  return jax.tree_util.tree_map(
      np.asarray, nn.meta.unbox(
          model.init_trainables(jax.random.key(seed), context(params))))


def loss(module, method, trainables, params, batch, **kw):
  model = models.PromptModel(module, method)
  return model.loss_fn(trainables, params, batch, **kw)


def _trainer(method, cfg, mesh_shape, lr):
  devices = jax.devices()[:mesh_shape[0] * mesh_shape[1]]
  mesh = partitioning.make_mesh(*mesh_shape, devices=devices)
  rules = partitioning.standard_logical_axis_rules()
  bb = backbones.load(backbones.BackboneSpec(config=cfg, seed=1), mesh, rules)
  model = models.PromptModel(bb.module, method)
  ctx = prompts.InitContext(embedding=np.asarray(bb.embedding),
                            vocab=vocab_lib.ByteVocab())
  tx = optimizers.build_optimizer(optimizers.OptimizerConfig(learning_rate=lr))
  state = trainer_lib.create_train_state(
      model.init_trainables(jax.random.key(0), ctx), tx, seed=0)
  trainer = trainer_lib.Trainer(model, tx, mesh, rules, bb.shardings)
  return bb, trainer, trainer.place_state(state)


def run_steps(method, cfg, mesh_shape, steps, batch, lr=0.3):
  """Final params and per-step metrics of `steps` train steps on one batch."""
  bb, trainer, state = _trainer(method, cfg, mesh_shape, lr)
  history = []
  for _ in range(steps):
    state, metrics = trainer.train_step(state, bb.params, trainer.place_batch(batch))
    history.append(jax.device_get(metrics))
  return jax.device_get(state.params), history


def check_sharded_training(method, cfg, batch, steps=3, lr=0.3, atol=1e-5):
  """Loss drops on (1, 1), and a (2, 4) mesh gives the same params and losses."""
  p1, h1 = run_steps(method, cfg, (1, 1), steps, batch, lr)
  p8, h8 = run_steps(method, cfg, (2, 4), steps, batch, lr)
  assert h1[-1]["loss"] < h1[0]["loss"], [float(h["loss"]) for h in h1]
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(b, a, atol=atol, rtol=0), p1, p8)
  for a, b in zip(h1, h8):
    np.testing.assert_allclose(b["loss"], a["loss"], atol=atol, rtol=0)
  return p1, h1


FEATURES = {"inputs": 24, "targets": 4}


def smoke_data(seed: int = 0, data_cls=task_data.TextTaskData):
  task = synthetic.HELDOUT_TASK
  splits = {"train": synthetic.train_examples(task, 32, seed),
            "validation": synthetic.eval_examples(task, 8, seed)}
  return data_cls(splits, vocab_lib.ByteVocab(), FEATURES, batch_size=8, seed=seed,
                  label_strings=synthetic.label_strings(task))


def smoke_train(tmp_path, method, data=None, steps=2, **kw) -> dict:
  """A `steps`-step `train.train` run on a random byte-vocab backbone."""
  cfg = testing.tiny_config(vocab_size=vocab_lib.ByteVocab().vocab_size)
  result = train_lib.train(
      model_dir=str(tmp_path), backbone=backbones.BackboneSpec(config=cfg, seed=3),
      method=method, data=data or smoke_data(), num_steps=steps, log_every=1,
      progress_bar=False, mesh=train_lib.MeshConfig(), **kw)
  assert np.isfinite(result["train/loss"]), result
  assert result["trainable_params"] > 0
  return result


partial = functools.partial
