"""DePT: parameter budget, the low-rank input offset, two learning rates."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax import methods
from ptuning_jax.training import optimizers
from ptuning_jax.methods import initializers
from ptuning_jax.backbones import t5
from ptuning_jax.methods import dept

M, R, SMAX = 3, 2, 9
LOW_RANK_GROUP = optimizers.ParamGroup("low_rank", "(^|/)low_rank_[ab]$", 1e-3)


@pytest.mark.parametrize("m,r,s", [(M, R, SMAX), (60, 30, 256), (40, 45, 256),
                                   (80, 15, 256), (60, 24, 512)])
def test_param_count_is_m_d_plus_r_s_plus_d(m, r, s):
  for cfg in (mt.config(), t5.get_config("base")):
    d = cfg.d_model
    count = methods.count_params(dept.DePT(mt.spec(cfg), length=m, rank=r, max_length=s,
                                           initializer=initializers.normal()))
    assert count == m * d + r * (s + d) == dept.num_params(d, m, r, s)
  if (m, r) != (M, R):  # DePT's T5-Base settings match a 100-token prompt.
    assert dept.num_params(768, m, r, s) == 100 * 768


def test_solve_budget_gives_depts_settings():
  assert dept.solve_budget(100, 768, 256) == dept.Budget(60, 30, 76_800, 76_800)
  assert dept.solve_budget(100, 768, 512) == dept.Budget(60, 24, 76_800, 76_800)
  exact = {(b.length, b.rank) for b in dept.exact_solutions(100, 768, 256)}
  assert {(40, 45), (60, 30), (80, 15)} <= exact
  for b in dept.exact_solutions(100, 768, 256):
    assert dept.num_params(768, b.length, b.rank, 256) == 76_800
  # No exact split near 60 at s = 348: r rounded down, within budget.
  multirc = dept.solve_budget(100, 768, 348, length=60)
  assert (multirc.length, multirc.rank, multirc.exact) == (60, 27, False)
  assert multirc.params == 60 * 768 + 27 * (348 + 768) <= 76_800
  assert dept.solve_budget(100, 768, 256, length=80).rank == 15
  with pytest.raises(ValueError, match="no rank r >= 1"):
    dept.solve_budget(2, 4, 100, length=1)


def test_offset_math_and_zero_init():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  method = dept.DePT(mt.spec(cfg), length=M, rank=R, max_length=SMAX)
  trainables = mt.init(method, params)
  np.testing.assert_array_equal(trainables["low_rank_b"], 0.0)  # E' = E at start
  bound = 1 / math.sqrt(R)
  assert np.abs(trainables["low_rank_a"]).max() <= bound
  assert np.abs(trainables["low_rank_a"]).max() > 0.5 * bound
  x = np.random.default_rng(0).normal(size=(2, 6, cfg.d_model)).astype(np.float32)
  tokens = np.ones((2, 6), np.int32)
  mask = np.ones((2, 6), bool)
  hk = method.apply({"params": trainables}, 2)
  out, out_mask = hk.inputs["encoder"](x, tokens, mask)
  np.testing.assert_array_equal(
      out[:, :M], np.broadcast_to(trainables["prompt"], (2, M, cfg.d_model)))
  np.testing.assert_array_equal(out[:, M:], x)  # B = 0: bit for bit
  assert out_mask.shape == (2, M + 6) and out_mask.all()
  trainables = dict(trainables, low_rank_b=np.random.default_rng(1).normal(
      size=(R, cfg.d_model)).astype(np.float32))
  out, _ = method.apply({"params": trainables}, 2).inputs["encoder"](x, tokens, mask)
  expected = x + 8.0 / math.sqrt(R) * (trainables["low_rank_a"][:6] @ trainables["low_rank_b"])
  np.testing.assert_allclose(out[:, M:], expected, rtol=1e-6, atol=1e-6)


def test_input_longer_than_max_length_is_an_error():
  cfg = mt.config()
  module, params = mt.frozen(cfg)
  method = dept.DePT(mt.spec(cfg), length=M, rank=R, max_length=4)
  batch = mt.make_batch(cfg.vocab_size)  # T = 7 > s = 4
  with pytest.raises(ValueError, match="exceed max_length s=4"):
    mt.loss(module, method, mt.init(method, params), params, batch)


def test_repeated_text_init():
  cfg = mt.config(vocab_size=300)
  _, params = mt.frozen(cfg)
  ctx = mt.context(params)
  value = dept.repeated_text("abc")(jax.random.key(0), (7, cfg.d_model), ctx)
  ids = ctx.vocab.encode("abc")
  expected = ctx.embedding[np.asarray((ids * 3)[:7])]
  np.testing.assert_array_equal(value, expected)


def test_two_learning_rates_select_the_factors():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  trainables = mt.init(dept.DePT(mt.spec(cfg), length=M, rank=R, max_length=SMAX), params)
  labels = optimizers.group_labels(trainables, (LOW_RANK_GROUP,))
  assert labels == {"prompt": "default", "low_rank_a": "low_rank",
                    "low_rank_b": "low_rank"}
  # Only the low-rank group moves when the prompt's learning rate is 0.
  tx = optimizers.build_optimizer(optimizers.OptimizerConfig(
      name="adamw", learning_rate=0.0, param_groups=(LOW_RANK_GROUP,)))
  grads = jax.tree_util.tree_map(jnp.ones_like, trainables)
  updates, _ = tx.update(grads, tx.init(trainables), trainables)
  assert not np.any(updates["prompt"])
  assert np.all(updates["low_rank_a"] != 0) and np.all(updates["low_rank_b"] != 0)


def test_training_sharded_equals_unsharded(tmp_path):
  cfg = mt.sharded_config()
  optimizer = optimizers.OptimizerConfig(
      name="adamw", learning_rate=0.3, schedule="linear", warmup_steps=1,
      total_steps=20, param_groups=(LOW_RANK_GROUP,))
  result = mt.check_training(
      tmp_path, mt.partial(dept.DePT, length=M, rank=R, max_length=mt.FEATURES["inputs"],
                           initializer=dept.repeated_text("freq: ")),
      optimizer=optimizer)
  assert result["trainable_params"] == dept.num_params(
      cfg.d_model, M, R, mt.FEATURES["inputs"])
