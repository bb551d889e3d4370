"""Prefix tuning: parameter counts, hook shapes, folding, dropout, training."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax import methods
from ptuning_jax.backbones import t5
from ptuning_jax.methods import prefix_tuning

P = 3


ALL_SITES = ("encoder/self", "decoder/self", "decoder/cross")  # T5's


def test_all_sites_are_t5s():
  assert mt.spec().attention_sites == ALL_SITES


@pytest.mark.parametrize("sites,hidden", [
    (("encoder/self",), 0), (ALL_SITES, 0), (("decoder/cross",), 7),
    (("encoder/self", "decoder/self"), 4)])
def test_param_count_matches_formula(sites, hidden):
  cfg = mt.config()
  method = prefix_tuning.PrefixTuning(mt.spec(cfg), length=P, sites=sites,
                                      projection_hidden=hidden)
  count = methods.count_params(method)
  assert count == prefix_tuning.num_params(method.spec, P, sites, hidden)
  if not hidden:  # 2 L P K D per site (K = N for T5), L of the site's stack
    layers = {"encoder/self": cfg.num_encoder_layers,
              "decoder/self": cfg.num_decoder_layers,
              "decoder/cross": cfg.num_decoder_layers}
    assert count == sum(2 * layers[s] * P * cfg.num_heads * cfg.d_kv for s in sites)


def test_base_count():
  cfg = t5.get_config("base")
  method = prefix_tuning.PrefixTuning(mt.spec(cfg), length=100)
  assert methods.count_params(method) == 2 * 12 * 100 * 12 * 64


def test_hooks_shapes_and_layout():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  method = prefix_tuning.PrefixTuning(mt.spec(cfg), length=P, sites=ALL_SITES)
  trainables = mt.init(method, params)
  hk = method.apply({"params": trainables}, 4)
  assert set(hk.kv_prefixes) == set(ALL_SITES)
  enc = hk.kv_prefixes["encoder/self"]
  assert enc.key.shape == (cfg.num_encoder_layers, 4, P, cfg.num_heads, cfg.d_kv)
  assert hk.kv_prefixes["decoder/cross"].value.shape[0] == cfg.num_decoder_layers
  for b in range(4):  # every example gets the same prefix
    np.testing.assert_array_equal(enc.key[:, b], trainables["encoder_self"]["key"])
  # PEFT / P-Tuning v2 flat layout: entry 2 l is layer l's key, 2 l + 1 its value.
  flat = jnp.arange(P * 2 * 2 * 3 * 5, dtype=jnp.float32).reshape(P, -1)
  key, value = prefix_tuning.split_flat_prefix(flat, 2, 3, 5)
  view = flat.reshape(P, 4, 3, 5)
  np.testing.assert_array_equal(key[1], view[:, 2])
  np.testing.assert_array_equal(value[1], view[:, 3])


def test_fold_gives_identical_outputs():
  cfg = mt.config()
  module, params = mt.frozen(cfg)
  batch = mt.make_batch(cfg.vocab_size)
  method = prefix_tuning.PrefixTuning(mt.spec(cfg), length=P, sites=ALL_SITES,
                                      projection_hidden=6)
  trainables = mt.init(method, params)
  folded, folded_params = methods.fold(method, trainables)
  assert folded.projection_hidden == 0
  assert methods.count_params(folded) == prefix_tuning.num_params(
      method.spec, P, ALL_SITES)
  shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)
  assert shapes(folded_params) == shapes(mt.init(folded, params))
  before, _ = mt.loss(module, method, trainables, params, batch)
  after, _ = mt.loss(module, folded, folded_params, params, batch)
  np.testing.assert_array_equal(after, before)
  # Unchanged without a reparameterisation.
  direct = folded.clone()
  assert methods.fold(direct, folded_params) == (direct, folded_params)


def test_prefix_dropout():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  method = prefix_tuning.PrefixTuning(mt.spec(cfg), length=P, dropout_rate=0.5)
  trainables = mt.init(method, params)
  kept = method.apply({"params": trainables}, 2, deterministic=True)
  np.testing.assert_array_equal(kept.kv_prefixes["encoder/self"].key[:, 0],
                                trainables["encoder_self"]["key"])
  dropped = method.apply({"params": trainables}, 2, deterministic=False,
                         rngs={"dropout": jax.random.key(0)})
  key = np.asarray(dropped.kv_prefixes["encoder/self"].key)  # [L, B, P, N, D]
  zero = key == 0
  assert 0.3 < zero.mean() < 0.7
  np.testing.assert_allclose(key[~zero], (2 * np.broadcast_to(
      trainables["encoder_self"]["key"][:, None], key.shape))[~zero], rtol=1e-6)
  assert not np.array_equal(zero[:, 0], zero[:, 1])  # per-example masks


def test_bad_site_is_an_error():
  cfg = mt.config()
  with pytest.raises(ValueError, match="sites='decoder'"):
    methods.count_params(prefix_tuning.PrefixTuning(mt.spec(cfg), sites=("decoder",)))


def test_training_sharded_equals_unsharded(tmp_path):
  cfg = mt.sharded_config()
  result = mt.check_training(tmp_path, mt.partial(
      prefix_tuning.PrefixTuning, length=P, sites=ALL_SITES,
      projection_hidden=8, dropout_rate=0.1))
  assert result["trainable_params"] == prefix_tuning.num_params(
      mt.spec(cfg), P, ALL_SITES, 8)
