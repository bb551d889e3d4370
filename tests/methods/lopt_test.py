"""LoPT-2: count 2 r H, fixed X0, least-squares start, folding, training."""
import jax
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax import methods
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.methods import lopt

P, RANK = 5, 3


def test_param_count_is_two_r_h_whatever_the_length():
  cfg = mt.config()
  for length in (P, 4 * P):
    method = lopt.LoPT2Prompt(mt.spec(cfg), length=length, rank=RANK, init_mode="random")
    assert methods.count_params(method) == 2 * RANK * cfg.d_model
    assert lopt.num_params(cfg.d_model, RANK) == 2 * RANK * cfg.d_model


def test_prompt_is_activation_of_fixed_input_times_factors():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  method = lopt.LoPT2Prompt(mt.spec(cfg), length=P, rank=RANK, activation="tanh",
                            init_mode="random", x0_seed=7)
  tr = mt.init(method, params)
  x0 = np.asarray(jax.random.normal(jax.random.key(7), (P, cfg.d_model)))
  expected = np.tanh(x0 @ tr["lopt_u"]) @ tr["lopt_v"]
  hooks = method.apply({"params": tr}, 2)
  x = np.zeros((2, 3, cfg.d_model), np.float32)
  out, _ = hooks.inputs["encoder"](x, np.ones((2, 3), np.int32), np.ones((2, 3), bool))
  np.testing.assert_allclose(out[0, :P], expected, atol=1e-5)
  np.testing.assert_allclose(out[1, :P], expected, atol=1e-5)
  # U starts with unit-variance pre-activations.
  assert 0.5 < np.std(x0 @ tr["lopt_u"]) < 2.0


def test_fit_init_is_the_least_squares_fit_of_the_initial_prompt():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  target = np.random.default_rng(0).normal(size=(P, cfg.d_model)).astype(np.float32)
  method = lopt.LoPT2Prompt(mt.spec(cfg), length=P, rank=RANK,
                            initializer=lambda rng, shape, ctx: target)
  tr = mt.init(method, params)
  x0 = np.asarray(lopt.fixed_input(0, P, cfg.d_model), np.float64)
  hidden = 1 / (1 + np.exp(-(x0 @ np.asarray(tr["lopt_u"], np.float64))))
  v_best = np.linalg.lstsq(hidden, target, rcond=None)[0]
  np.testing.assert_allclose(tr["lopt_v"], v_best, atol=1e-4)
  # The residual is orthogonal to the span (normal equations).
  residual = target - hidden @ np.asarray(tr["lopt_v"], np.float64)
  np.testing.assert_allclose(hidden.T @ residual, 0, atol=1e-3)


def test_fold_gives_identical_outputs():
  folded, _ = mt.check_fold(lopt.LoPT2Prompt(mt.spec(mt.config()), length=P, rank=RANK))
  assert isinstance(folded, prompt_tuning.SoftPrompt)


@pytest.mark.parametrize("kwargs, culprit", [
    (dict(activation="swish"), "activation='swish'"),
    (dict(init_mode="svd"), "init_mode='svd'"),
    (dict(rank=10_000), "rank=10000 exceeds the embed width")])
def test_bad_settings_name_the_attribute(kwargs, culprit):
  with pytest.raises(ValueError, match=culprit):
    methods.count_params(lopt.LoPT2Prompt(mt.spec(mt.config()), **{"length": P, **kwargs}))


def test_training_sharded_equals_unsharded(tmp_path):
  cfg = mt.sharded_config()
  result = mt.check_training(tmp_path, mt.partial(
      lopt.LoPT2Prompt, length=P, rank=RANK, initializer=initializers.sampled_vocab(100)))
  assert result["trainable_params"] == 2 * RANK * cfg.d_model
