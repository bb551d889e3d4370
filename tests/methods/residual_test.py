"""Residual prompt tuning: the reparameterisation, its count, folding, training."""
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax import methods
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.backbones import t5
from ptuning_jax.methods import residual

P, M = 3, 5


@pytest.mark.parametrize("layer_norm", [True, False])
def test_param_count_matches_formula(layer_norm):
  cfg = mt.config()
  h = cfg.d_model
  method = residual.ResidualPrompt(mt.spec(cfg), length=P, bottleneck=M, layer_norm=layer_norm,
                                   initializer=initializers.normal())
  expected = P * h + (h * M + M) + (M * h + h) + (2 * h if layer_norm else 0)
  assert methods.count_params(method) == expected == residual.num_params(h, P, M, layer_norm)


def test_large_count_matches_dpt_figure():
  # DPT's Figure 1: residual prompt tuning on T5-Large has 925K parameters.
  method = residual.ResidualPrompt(mt.spec(t5.get_config("large")), length=100, bottleneck=400,
                                   initializer=initializers.normal())
  assert methods.count_params(method) == 925_072


def test_reparameterisation_formula():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  method = residual.ResidualPrompt(mt.spec(cfg), length=P, bottleneck=M)
  tr = mt.init(method, params)
  rng = np.random.default_rng(0)  # non-trivial LayerNorm parameters
  tr["mlp"]["layer_norm"] = {"scale": rng.normal(size=cfg.d_model).astype(np.float32),
                             "bias": rng.normal(size=cfg.d_model).astype(np.float32)}
  x = np.zeros((1, 2, cfg.d_model), np.float32)
  out, _ = method.apply({"params": tr}, 1).inputs["encoder"](
      x, np.ones((1, 2), np.int32), np.ones((1, 2), bool))
  mlp = tr["mlp"]
  h = np.maximum(tr["prompt"] @ mlp["down"]["kernel"] + mlp["down"]["bias"], 0)
  h = h @ mlp["up"]["kernel"] + mlp["up"]["bias"]
  mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
  ln = (h - mean) / np.sqrt(var + 1e-5) * mlp["layer_norm"]["scale"] + mlp["layer_norm"]["bias"]
  np.testing.assert_allclose(out[0, :P], tr["prompt"] + ln, atol=1e-5)


def test_fold_gives_identical_outputs():
  cfg = mt.config()
  method = residual.ResidualPrompt(mt.spec(cfg), length=P, bottleneck=M, dropout_rate=0.3)
  folded, _ = mt.check_fold(method)
  assert isinstance(folded, prompt_tuning.SoftPrompt)
  assert methods.count_params(folded) == P * cfg.d_model


def test_training_sharded_equals_unsharded(tmp_path):
  cfg = mt.sharded_config()
  result = mt.check_training(tmp_path, mt.partial(
      residual.ResidualPrompt, length=P, bottleneck=M,
      initializer=initializers.sampled_vocab(100)))
  assert result["trainable_params"] == residual.num_params(cfg.d_model, P, M)
