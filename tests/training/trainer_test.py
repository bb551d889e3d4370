"""Train-step invariants: only trainables change, optimizer state covers only
the trainables, sharded equals unsharded, one compilation, microbatching."""

import chex
import jax
import numpy as np
import pytest

from ptuning_jax import backbones
from ptuning_jax.models import seq2seq
from ptuning_jax.training import optimizers
from ptuning_jax.training import partitioning
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax import testing
from ptuning_jax.training import trainer as trainer_lib

B, T, S, P = 8, 7, 5, 3


def _batch(vocab_size, seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab_size, (B, T)).astype(np.int32)
  enc[:, -2:] = 0  # padding
  tgt = rng.integers(2, vocab_size, (B, S)).astype(np.int32)
  tgt[::2, -1] = 0
  dec_in = np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], 1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": (tgt > 0).astype(np.float32)}


def _setup(mesh_shape=(1, 1), microbatches=1, lr=0.3):
  config = testing.tiny_config()
  devices = jax.devices()[:mesh_shape[0] * mesh_shape[1]]
  mesh = partitioning.make_mesh(*mesh_shape, devices=devices)
  rules = partitioning.standard_logical_axis_rules()
  bb = backbones.load(backbones.BackboneSpec(config=config, seed=1), mesh, rules)
  method = prompt_tuning.SoftPrompt(spec=bb.spec, length=P,
                              initializer=initializers.sampled_vocab(50))
  model = seq2seq.Seq2SeqModel(bb.module, method)
  context = initializers.InitContext(embedding=np.asarray(bb.embedding))
  tx = optimizers.build_optimizer(optimizers.OptimizerConfig(learning_rate=lr))
  state = trainer_lib.create_train_state(
      model.init_trainables(jax.random.key(0), context), tx, seed=0)
  trainer = trainer_lib.Trainer(model, tx, mesh, rules, bb.shardings,
                                num_microbatches=microbatches)
  return config, bb, trainer, trainer.place_state(state)


def _run(trainer, state, frozen, steps, vocab_size):
  history = []
  for i in range(steps):
    state, metrics = trainer.train_step(state, frozen,
                                        trainer.place_batch(_batch(vocab_size, i)))
    history.append(jax.device_get(metrics))
  return state, history


def test_only_trainables_change_and_loss_drops():
  config, bb, trainer, state = _setup()
  frozen_before = jax.device_get(bb.params)
  prompt_before = np.asarray(state.params["method"]["prompt"])
  batch = trainer.place_batch(_batch(config.vocab_size))
  losses = []
  for _ in range(6):
    state, metrics = trainer.train_step(state, bb.params, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0]
  assert not np.array_equal(np.asarray(state.params["method"]["prompt"]), prompt_before)
  chex.assert_trees_all_equal(jax.device_get(bb.params), frozen_before)
  assert int(state.step) == 6


def test_optimizer_state_covers_only_trainables():
  config, bb, trainer, state = _setup()
  trainable = optimizers.num_params(state.params)
  assert trainable == P * config.d_model
  # Every optimizer-state array is a trainable-shaped moment, a count or one of
  # optax's 1-element placeholders for unfactored moments: nothing backbone-sized.
  leaves = jax.tree_util.tree_leaves(state.opt_state)
  big = {tuple(x.shape) for x in leaves if x.size > 1}
  assert big == {(P, config.d_model)}, big
  assert sum(x.size for x in leaves) < 2 * trainable + 16
  assert optimizers.optimizer_state_bytes(state.opt_state) < 4 * 4 * trainable + 64


@pytest.mark.parametrize("mesh_shape", [(8, 1), (2, 4)])
def test_sharded_step_equals_single_device(mesh_shape):
  config, bb1, t1, s1 = _setup((1, 1))
  _, bb8, t8, s8 = _setup(mesh_shape)
  s1, h1 = _run(t1, s1, bb1.params, 3, config.vocab_size)
  s8, h8 = _run(t8, s8, bb8.params, 3, config.vocab_size)
  np.testing.assert_allclose(np.asarray(s8.params["method"]["prompt"]),
                             np.asarray(s1.params["method"]["prompt"]), atol=1e-5, rtol=0)
  for a, b in zip(h1, h8):
    np.testing.assert_allclose(b["loss"], a["loss"], atol=1e-5, rtol=0)


def test_step_compiles_once():
  config, bb, trainer, state = _setup((2, 4))
  state, _ = _run(trainer, state, bb.params, 4, config.vocab_size)
  assert trainer.train_step_cache_size == 1


def test_microbatches_equal_full_batch():
  config, bb, t1, s1 = _setup(lr=0.01)
  _, _, t4, s4 = _setup(microbatches=4, lr=0.01)
  s1, h1 = _run(t1, s1, bb.params, 2, config.vocab_size)
  s4, h4 = _run(t4, s4, bb.params, 2, config.vocab_size)
  np.testing.assert_allclose(h4[0]["loss"], h1[0]["loss"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(h4[0]["grad_norm"], h1[0]["grad_norm"], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(s4.params["method"]["prompt"]),
                             np.asarray(s1.params["method"]["prompt"]), atol=1e-5, rtol=0)


def test_microbatches_must_divide_batch():
  _, bb, t3, s3 = _setup(microbatches=3)
  with pytest.raises(ValueError, match="not divisible by num_microbatches=3"):
    t3.train_step(s3, bb.params, t3.place_batch(_batch(101)))


class _TokenTerm:
  """A loss term reporting a per-target-token mean (weighted like the loss)."""

  def __call__(self, model, trainables, frozen, batch, outputs, rng, deterministic):
    weights = batch["decoder_loss_weights"]
    value = (jax.numpy.sum(jax.numpy.mean(outputs.logits ** 2, -1) * weights)
             / jax.numpy.maximum(jax.numpy.sum(weights), 1.0))
    return 1e-3 * value, {"logit_square": value}


def test_microbatches_report_every_metric_the_full_batch_reports():
  """Regression: with num_microbatches > 1 the step used to return only the
  loss, token accuracy and target tokens, dropping `aux_loss` and loss-term
  metrics (e.g. MPT's distillation terms)."""
  from ptuning_jax.methods import ia3  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class SownIA3(ia3.IA3):
    @nn.compact
    def __call__(self, batch_size, context=initializers.InitContext(),
                 deterministic=True, batch=None):
      hooks = super().__call__(batch_size, context, deterministic, batch)
      self.sow("losses", "l2", 1e-2 * sum(jax.numpy.sum(jax.numpy.square(v - 1.0) + 1.0)
                                          for v in hooks.scales.values()))
      return hooks

  config = testing.tiny_config()
  mesh = partitioning.make_mesh(1, 1)
  rules = partitioning.standard_logical_axis_rules()
  bb = backbones.load(backbones.BackboneSpec(config=config, seed=1), mesh, rules)
  model = seq2seq.Seq2SeqModel(bb.module, SownIA3(bb.spec), (_TokenTerm(),))
  tx = optimizers.build_optimizer(optimizers.OptimizerConfig(learning_rate=0.01))
  histories, params = [], []
  for micro in (1, 4):
    state = trainer_lib.create_train_state(model.init_trainables(jax.random.key(0)), tx, 0)
    trainer = trainer_lib.Trainer(model, tx, mesh, rules, bb.shardings,
                                  num_microbatches=micro)
    state, history = _run(trainer, trainer.place_state(state), bb.params, 2,
                          config.vocab_size)
    histories.append(history)
    params.append(jax.device_get(state.params))
  full, micro = histories
  for a, b in zip(full, micro):
    assert set(b) == set(a) >= {"loss", "token_accuracy", "target_tokens", "aux_loss",
                                "logit_square", "grad_norm"}
    for key in a:
      np.testing.assert_allclose(b[key], a[key], atol=1e-5, rtol=1e-5, err_msg=key)
  chex.assert_trees_all_close(params[1], params[0], atol=1e-5, rtol=0)
