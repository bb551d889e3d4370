"""(IA)^3: per-layer vector counts, identity at init, rescaling, training."""
import jax
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax import methods
from ptuning_jax.backbones import t5
from ptuning_jax.methods import ia3


def test_param_count_per_layer_vectors():
  cfg = mt.config()
  nd, f = cfg.num_heads * cfg.d_kv, cfg.d_ff
  assert methods.count_params(ia3.IA3(mt.spec(cfg))) == (
      cfg.num_encoder_layers * (2 * nd + f) + cfg.num_decoder_layers * (4 * nd + f))
  assert methods.count_params(ia3.IA3(mt.spec(cfg), sites=("encoder/self/k", "decoder/mlp"))) == (
      cfg.num_encoder_layers * nd + cfg.num_decoder_layers * f)
  base = t5.get_config("base")
  assert methods.count_params(ia3.IA3(mt.spec(base))) == ia3.num_params(mt.spec(base)) == (
      12 * (2 * 768 + 2048) + 12 * (4 * 768 + 2048))


def test_ones_give_the_plain_backbone_bit_for_bit():
  cfg = mt.config()
  module, params = mt.frozen(cfg)
  batch = mt.make_batch(cfg.vocab_size)
  method = ia3.IA3(mt.spec(cfg))
  trainables = mt.init(method, params)
  for leaf in jax.tree_util.tree_leaves(trainables):
    np.testing.assert_array_equal(leaf, 1.0)
  hk = method.apply({"params": trainables}, mt.B)
  assert set(hk.scales) == set(method.spec.scale_sites) == {
      "encoder/self/k", "encoder/self/v", "encoder/mlp", "decoder/self/k",
      "decoder/self/v", "decoder/cross/k", "decoder/cross/v", "decoder/mlp"}
  args = (batch["encoder_input_tokens"], batch["decoder_input_tokens"])
  plain = module.apply({"params": params}, *args)
  np.testing.assert_array_equal(module.apply({"params": params}, *args, hooks=hk), plain)
  # A scale on one site changes the outputs.
  scaled = jax.tree_util.tree_map(np.copy, trainables)
  scaled["decoder"]["cross_v"][1] *= 2.0
  hk = method.apply({"params": scaled}, mt.B)
  assert not np.allclose(module.apply({"params": params}, *args, hooks=hk), plain,
                         atol=1e-3)


def test_value_scale_equals_scaled_value_kernel():
  """l_v * v is v computed with the value kernel's columns scaled by l_v."""
  cfg = mt.config()
  module, params = mt.frozen(cfg)
  batch = mt.make_batch(cfg.vocab_size)
  method = ia3.IA3(mt.spec(cfg), sites=("encoder/self/v",))
  trainables = mt.init(method, params)
  scale = np.random.default_rng(0).uniform(0.5, 1.5, trainables["encoder"]["self_v"].shape)
  trainables["encoder"]["self_v"] = scale.astype(np.float32)
  hk = method.apply({"params": trainables}, mt.B)
  edited = jax.tree_util.tree_map(np.copy, params)
  for i in range(cfg.num_encoder_layers):
    kernel = edited["encoder"][f"layers_{i}"]["attention"]["value"]["kernel"]  # [H, N, D]
    kernel *= scale[i].reshape(cfg.num_heads, cfg.d_kv)[None].astype(np.float32)
  args = (batch["encoder_input_tokens"], batch["decoder_input_tokens"])
  np.testing.assert_allclose(module.apply({"params": params}, *args, hooks=hk),
                             module.apply({"params": edited}, *args), atol=1e-5)


def test_bad_site_is_an_error():
  with pytest.raises(ValueError, match="sites='encoder/self/q'"):
    methods.count_params(ia3.IA3(mt.spec(mt.config()), sites=("encoder/self/q",)))


def test_training_sharded_equals_unsharded(tmp_path):
  cfg = mt.sharded_config()
  result = mt.check_training(tmp_path, mt.partial(ia3.IA3))
  assert result["trainable_params"] == ia3.num_params(mt.spec(cfg))
