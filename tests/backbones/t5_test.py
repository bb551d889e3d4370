"""Tests of ptuning_jax.backbones.t5: config, parameter layout, HF parity, hooks, dtypes."""
import dataclasses
import functools
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptuning_jax.backbones.hf import t5 as hf_t5
from ptuning_jax import hooks as hooks_lib
from ptuning_jax.backbones import layers
from ptuning_jax.backbones import t5
from ptuning_jax import testing

# Odd shapes: heads not a power of two, N * D != H, different depths,
# non-default buckets / max distance; T5 1.1 and original T5.
PARITY_CONFIGS = {
    "t5_1_1_tiny": testing.tiny_config(),
    "original_odd": t5.original_t5_config(
        "small", vocab_size=97, d_model=16, num_heads=2, d_kv=8, d_ff=24,
        num_encoder_layers=2, num_decoder_layers=1,
        relative_attention_num_buckets=6, relative_attention_max_distance=9),
    "t5_1_1_odd": testing.tiny_config(
        vocab_size=67, d_model=10, num_heads=5, d_kv=3, d_ff=14,
        num_encoder_layers=3, num_decoder_layers=2,
        relative_attention_num_buckets=10, relative_attention_max_distance=13),
}


def _apply(config, params, *args, method=None, jit=False, **kwargs):
  """`T5(config).apply` (optionally jitted, with kwargs such as hooks closed over)."""
  model = t5.T5(config)
  fn = functools.partial(model.apply, method=None if method is None else getattr(model, method),
                         **kwargs)
  variables = params if "cache" in params else {"params": params}
  return (jax.jit(fn) if jit else fn)(variables, *args)


def _batch(config, seed=0, batch=3, enc_len=9, dec_len=6):
  """Encoder ids right-padded with 0 (rows of different lengths), decoder ids."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, config.vocab_size, size=(batch, enc_len))
  for row, length in enumerate([enc_len, 5, 7][:batch]):
    enc[row, length - 1] = 1
    enc[row, length:] = 0
  dec = rng.randint(2, config.vocab_size, size=(batch, dec_len))
  dec[:, 0] = 0
  return jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32)


# ------------------------------------------------------------------ config ----


def test_num_params_matches_init_param_count():
  for config in [testing.tiny_config(), *PARITY_CONFIGS.values(),
                 testing.tiny_config(tie_word_embeddings=True, feed_forward="relu")]:
    dummy = jnp.ones((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: t5.T5(config).init(jax.random.PRNGKey(0), dummy, dummy))
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
        nn.meta.unbox(shapes["params"])))
    assert count == t5.num_params(config)


def test_init_params_matches_init_structure():
  for config in (testing.tiny_config(), testing.tiny_config(
      tie_word_embeddings=True, feed_forward="relu", param_dtype="bfloat16")):
    dummy = jnp.ones((1, 1), jnp.int32)
    shapes = nn.meta.unbox(jax.eval_shape(
        lambda: t5.T5(config).init(jax.random.PRNGKey(0), dummy, dummy)["params"]))
    params = testing.init_params(config, seed=1)
    assert (jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes))
    for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(shapes)):
      assert (got.shape, got.dtype) == (want.shape, want.dtype)
    again = testing.init_params(config, seed=1)
    other = testing.init_params(config, seed=2)
    emb = lambda p: np.asarray(p["token_embedder"]["embedding"], np.float32)
    np.testing.assert_array_equal(emb(params), emb(again))
    assert not np.array_equal(emb(params), emb(other))


def test_num_params_published_sizes():
  # Hugging Face model cards / PreTrainedModel.num_parameters() of the
  # published checkpoints (google/t5-v1_1-*, google/mt5-small, t5-*).
  published = {
      t5.get_config("small"): 76_961_152,
      t5.get_config("base"): 247_577_856,
      t5.get_config("large"): 783_150_080,
      t5.get_config("xl"): 2_849_757_184,
      t5.get_config("xxl"): 11_135_332_352,
      t5.mt5_config("small"): 300_176_768,
      t5.original_t5_config("small"): 60_506_624,
      t5.original_t5_config("base"): 222_903_552,
      t5.original_t5_config("large"): 737_668_096,
      t5.original_t5_config("3b"): 2_851_598_336,
      t5.original_t5_config("11b"): 11_307_321_344,
  }
  for config, count in published.items():
    assert t5.num_params(config) == count, config


def test_num_params_matches_hf_on_meta_device():
  torch = pytest.importorskip("torch")
  for config in (t5.get_config("small"), t5.original_t5_config("small")):
    with torch.device("meta"):
      model = testing.make_hf_model(config)
    # `parameters()` de-duplicates tied tensors.
    assert sum(p.numel() for p in model.parameters()) == t5.num_params(config)


def test_sizes_and_presets():
  tiny = t5.SIZES["tiny"]
  assert tiny.num_heads == 3 and tiny.d_kv == 5 and tiny.num_heads * tiny.d_kv != tiny.d_model
  assert tiny.num_encoder_layers != tiny.num_decoder_layers
  base = t5.get_config("base", dropout_rate=0.1)
  assert (base.d_model, base.num_heads, base.d_kv, base.d_ff, base.num_encoder_layers,
          base.dropout_rate) == (768, 12, 64, 2048, 12, 0.1)
  assert t5.mt5_config("xl").vocab_size == 250112
  small = t5.original_t5_config("small")
  assert small.tie_word_embeddings and small.feed_forward == "relu" and small.d_ff == 2048
  with pytest.raises(ValueError, match="Unknown T5 1.1 size 'huge'"):
    t5.get_config("huge")


@pytest.mark.parametrize("field,value", [
    ("feed_forward", "gated-silu"), ("remat_policy", "some"), ("attention_impl", "flash"),
    ("dtype", "int8"), ("param_dtype", "floatz"), ("num_heads", 0), ("d_model", 1.5),
    ("relative_attention_max_distance", 4)])
def test_config_validation_names_field(field, value):
  with pytest.raises(ValueError, match=field):
    testing.tiny_config(**{field: value})


def test_presets_table_and_main():
  table = t5.presets_table()
  assert "t5_1_1-base" in table and "247,577,856" in table and "t5-small" in table
  out = subprocess.run([sys.executable, "-m", "ptuning_jax.backbones.t5"], capture_output=True,
                       text=True, check=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""})
  assert out.stdout == table + "\n"


def test_gin_model_files_build_the_presets():
  gin = pytest.importorskip("gin")
  import pathlib  # pylint: disable=g-import-not-at-top
  root = str(pathlib.Path(__file__).resolve().parents[2])
  original_small = [f"{k} = {v}" for k, v in dict(
      EMBED_DIM=512, NUM_HEADS=8, HEAD_DIM=64, MLP_DIM=2048, NUM_ENCODER_LAYERS=6,
      NUM_DECODER_LAYERS=6).items()]
  cases = [(["t5_1_1", "sizes/base"], [], t5.get_config("base")),
           (["t5_1_1", "sizes/xxl"], [], t5.get_config("xxl")),
           (["mt5", "sizes/small"], [], t5.mt5_config("small")),
           (["t5_original"], original_small, t5.original_t5_config("small")),
           (["t5_1_1", "sizes/tiny"], ["VOCAB_SIZE = 101"],
            t5.get_config("tiny", relative_attention_num_buckets=32,
                          relative_attention_max_distance=128))]
  try:
    for files, bindings, want in cases:
      gin.clear_config()
      gin.add_config_file_search_path(root)
      gin.parse_config_files_and_bindings(
          [f"{root}/gin/models/{f}.gin" for f in files], bindings)
      config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
      assert config == want, files
      assert gin.query_parameter("%MODEL").scoped_configurable_fn() == t5.T5(want)
  finally:
    gin.clear_config()


# --------------------------------------------------------- parameter tree ----


def test_param_tree_layout_and_axes():
  config = testing.tiny_config()
  dummy = jnp.ones((1, 1), jnp.int32)
  boxed = jax.eval_shape(lambda: t5.T5(config).init(jax.random.PRNGKey(0), dummy, dummy))
  specs = nn.get_partition_spec(boxed)["params"]
  shapes = nn.meta.unbox(boxed)["params"]
  assert shapes["token_embedder"]["embedding"].shape == (101, 12)
  assert specs["token_embedder"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
  assert specs["logits_dense"]["kernel"] == jax.sharding.PartitionSpec("embed", "vocab")
  assert specs["decoder"]["relpos_bias"]["rel_embedding"] == jax.sharding.PartitionSpec(
      "relpos_buckets", "heads")
  names = set()
  for spec in jax.tree_util.tree_leaves(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
    assert all(isinstance(a, str) for a in spec), spec  # every dim is named
    names.update(spec)
  assert names == {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets"}
  tied = t5.T5(testing.tiny_config(tie_word_embeddings=True))
  tied_shapes = jax.eval_shape(lambda: tied.init(jax.random.PRNGKey(0), dummy, dummy))
  assert "logits_dense" not in tied_shapes["params"]


# ------------------------------------------------------------- HF parity ----


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
  """name -> (config, HF model reloaded from disk, our params from the same dir)."""
  pytest.importorskip("torch")
  out = {}
  for name, config in PARITY_CONFIGS.items():
    path = testing.make_hf_t5(tmp_path_factory.mktemp(name), config, seed=7)
    loaded_config, params = hf_t5.load_checkpoint(path)
    assert loaded_config == dataclasses.replace(config, dropout_rate=loaded_config.dropout_rate)
    out[name] = (loaded_config, testing.load_hf_model(path), params)
  return out


def _hf_forward(hf, enc, dec):
  import torch  # pylint: disable=g-import-not-at-top
  enc_t = torch.tensor(np.asarray(enc), dtype=torch.long)
  with torch.no_grad():
    out = hf(input_ids=enc_t, attention_mask=(enc_t != 0).long(),
             decoder_input_ids=torch.tensor(np.asarray(dec), dtype=torch.long))
  return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_hf_parity_encoder_and_logits_padded_batch(hf_models, name):
  config, hf, params = hf_models[name]
  enc, dec = _batch(config, seed=1)
  want_encoded, want_logits = _hf_forward(hf, enc, dec)
  model = t5.T5(config)

  @jax.jit
  def run(params, enc, dec):
    encoded, mask = model.apply({"params": params}, enc, method=model.encode)
    return encoded, mask, model.apply({"params": params}, enc, dec)

  encoded, mask, logits = run(params, enc, dec)
  np.testing.assert_array_equal(np.asarray(mask), np.asarray(enc) != 0)
  np.testing.assert_allclose(np.asarray(encoded), want_encoded, rtol=1e-4, atol=1e-4)
  assert logits.dtype == jnp.float32 and logits.shape == dec.shape + (config.vocab_size,)
  np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["original_odd", "t5_1_1_odd"])  # tiny: see hooks tests
def test_cached_decoding_matches_full_pass(hf_models, name):
  config, _, params = hf_models[name]
  enc, dec = _batch(config, seed=2)
  _check_cached_matches_full(config, params, enc, dec, hooks_lib.NO_HOOKS)


def _check_cached_matches_full(config, params, enc, dec, hooks, chunks=None):
  """Decodes `dec` in chunks (default: one token each) through the cache."""
  model = t5.T5(config)

  @jax.jit
  def prepare(params, enc, dec):  # full pass, encoder outputs, allocated cache
    variables = {"params": params}
    encoded, mask = model.apply(variables, enc, hooks=hooks, method=model.encode)
    _, state = model.apply(variables, encoded, mask, dec, hooks=hooks, decode=True,
                           method=model.decode, mutable=["cache"])
    return model.apply(variables, enc, dec, hooks=hooks), encoded, mask, state

  full, encoded, mask, state = prepare(params, enc, dec)
  step = {first: jax.jit(functools.partial(
      model.apply, method=model.decode, decode=True, mutable=["cache"],
      hooks=hooks if first else hooks.without_prefix()))
          for first in (True, False)}
  chunks = chunks or [1] * dec.shape[1]
  start = 0
  for i, size in enumerate(chunks):
    logits, state = step[i == 0]({"params": params, "cache": state["cache"]}, encoded,
                                 mask, dec[:, start:start + size])
    np.testing.assert_allclose(np.asarray(logits), np.asarray(full[:, start:start + size]),
                               rtol=1e-5, atol=1e-5)
    start += size
  assert start == dec.shape[1]


# -------------------------------------------------------------- hooks ----


@pytest.fixture(scope="module")
def tiny():
  config = testing.tiny_config()
  params = testing.init_params(config, seed=3)
  enc, dec = _batch(config, seed=4)
  return config, params, enc, dec


def _rand(seed, shape, scale=1.0):
  return jnp.asarray(np.random.RandomState(seed).randn(*shape).astype(np.float32) * scale)


def _spec(config):
  return t5.hook_spec(config)


def _layer_values(config, stack, width=None):
  """[L] per-layer values of a stack (for LayerInputs)."""
  depth = config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers
  return jnp.arange(depth, dtype=jnp.float32)


def test_hook_spec_declares_stacks_and_sites(tiny):
  config = tiny[0]
  spec = _spec(config)
  assert spec.input_stack == "encoder" and spec.embed_dim == config.d_model
  assert spec.attention_sites == ("encoder/self", "decoder/self", "decoder/cross")
  assert [s.positions for s in spec.attention] == ["relative_bias", "relative_bias", "none"]
  assert spec.scale_sites == ("encoder/self/k", "encoder/self/v", "decoder/self/k",
                              "decoder/self/v", "decoder/cross/k", "decoder/cross/v",
                              "encoder/mlp", "decoder/mlp")
  assert spec.site("decoder/cross").kv_shape(4) == (3, 4, config.num_heads, config.d_kv)
  assert spec.scale_shape("decoder/mlp") == (3, config.d_ff)
  assert [s.causal for s in spec.stacks] == [False, True]


def test_identity_hooks_are_bit_identical(tiny):
  config, params, enc, dec = tiny
  plain = np.asarray(_apply(config, params, enc, dec))
  np.testing.assert_array_equal(np.asarray(_apply(config, params, enc, dec,
                                                  hooks=hooks_lib.Hooks())), plain)
  spec = _spec(config)
  scales = {site: jnp.ones(spec.scale_shape(site)) for site in spec.scale_sites}
  identity = hooks_lib.Hooks(
      inputs={"encoder": lambda x, tokens, mask: (x, mask)},
      layer_inputs={s: hooks_lib.LayerInputs(_layer_values(config, s),
                                             lambda v, x, mask: x)
                    for s in ("encoder", "decoder")},
      scales=scales)
  np.testing.assert_array_equal(np.asarray(_apply(config, params, enc, dec, hooks=identity)),
                                plain)


def test_inputs_prepending_embeddings_equals_prepending_tokens(tiny):
  config, params, enc, dec = tiny
  prompt_ids = jnp.asarray([5, 9, 13, 21])
  table = params["token_embedder"]["embedding"]

  def prepend(x, tokens, mask):
    prompt = jnp.broadcast_to(table[prompt_ids], (x.shape[0],) + (4, x.shape[2]))
    return (jnp.concatenate([prompt, x], 1),
            jnp.concatenate([jnp.ones((x.shape[0], 4), bool), mask], 1))

  hooks = hooks_lib.Hooks(inputs={"encoder": prepend})
  encoded, mask = _apply(config, params, enc, hooks=hooks, method="encode")
  assert encoded.shape == (enc.shape[0], enc.shape[1] + 4, config.d_model)
  assert mask.shape == (enc.shape[0], enc.shape[1] + 4)
  np.testing.assert_array_equal(np.asarray(mask[:, :4]), True)
  np.testing.assert_array_equal(np.asarray(mask[:, 4:]), np.asarray(enc) != 0)
  with_tokens = jnp.concatenate([jnp.broadcast_to(prompt_ids, (enc.shape[0], 4)), enc], 1)
  np.testing.assert_allclose(np.asarray(_apply(config, params, enc, dec, hooks=hooks)),
                             np.asarray(_apply(config, params, with_tokens, dec)),
                             rtol=1e-5, atol=1e-5)


def test_bad_hooks_name_the_site(tiny):
  config, params, enc, dec = tiny
  cases = [
      (hooks_lib.Hooks(inputs={"encoder": lambda x, t, m: (x, m[:, 1:])}),
       r"inputs\['encoder'\] returned a mask"),
      (hooks_lib.Hooks(inputs={"vision": lambda x, t, m: (x, m)}),
       "no stack 'vision'; it has \\['encoder', 'decoder'\\]"),
      (hooks_lib.Hooks(kv_prefixes={"encoder/cross": _kv_hooks(config, 1)["decoder/cross"]}),
       "no attention site 'encoder/cross'"),
      (hooks_lib.Hooks(scales={"encoder/k": jnp.ones((2, 15))}), "Unknown scale site"),
      (hooks_lib.Hooks(layer_inputs={"decoder": hooks_lib.LayerInputs(
          jnp.ones((2,)), lambda v, x, m: x)}), r"leading layer axis L=3"),
  ]
  for hooks, match in cases:
    with pytest.raises(ValueError, match=match):
      _apply(config, params, enc, dec, hooks=hooks)


def test_decoder_prefix_equals_prepending_decoder_tokens(tiny):
  config, params, enc, dec = tiny
  prefix_ids = jnp.asarray([[7, 8], [9, 10], [11, 12]])
  prefix = params["token_embedder"]["embedding"][prefix_ids]  # [B, 2, H]
  hooks = hooks_lib.Hooks(prefix={"decoder": prefix})
  logits = _apply(config, params, enc, dec, hooks=hooks)
  assert logits.shape == dec.shape + (config.vocab_size,)
  longer = _apply(config, params, enc, jnp.concatenate([prefix_ids, dec], 1))
  np.testing.assert_allclose(np.asarray(logits), np.asarray(longer[:, 2:]),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"prefix\['decoder'\] has shape"):
    _apply(config, params, enc, dec, hooks=hooks_lib.Hooks(prefix={"decoder": prefix[:1]}))


def _kv_hooks(config, batch, plen=3, seed=10):
  hooks = {}
  for i, site in enumerate(_spec(config).attention):
    shape = site.kv_shape(plen)
    shape = shape[:1] + (batch,) + shape[1:]  # [L, B, P, K, D]
    hooks[site.name] = hooks_lib.KVPrefix(key=_rand(seed + 2 * i, shape),
                                          value=_rand(seed + 2 * i + 1, shape))
  return hooks


def test_kv_prefixes_take_effect_per_site_and_broadcast(tiny):
  config, params, enc, dec = tiny
  plain = np.asarray(_apply(config, params, enc, dec))
  prefixes = _kv_hooks(config, batch=1)
  assert set(prefixes) == {"encoder/self", "decoder/self", "decoder/cross"}
  for site, prefix in prefixes.items():
    hooks = hooks_lib.Hooks(kv_prefixes={site: prefix})
    out = np.asarray(_apply(config, params, enc, dec, hooks=hooks))
    assert out.shape == plain.shape
    assert np.abs(out - plain).max() > 1e-3, site
    tiled = hooks_lib.KVPrefix(key=jnp.repeat(prefix.key, enc.shape[0], 1),
                               value=jnp.repeat(prefix.value, enc.shape[0], 1))
    np.testing.assert_array_equal(np.asarray(_apply(
        config, params, enc, dec, hooks=hooks_lib.Hooks(kv_prefixes={site: tiled}))), out)


def test_kv_prefix_shape_errors_name_the_site(tiny):
  config, params, enc, dec = tiny
  prefix = _kv_hooks(config, batch=1)["decoder/cross"]
  wrong = hooks_lib.KVPrefix(key=prefix.key[:-1], value=prefix.value[:-1])
  with pytest.raises(ValueError, match=r"kv_prefixes\['decoder/cross'\].key has shape"):
    _apply(config, params, enc, dec, hooks=hooks_lib.Hooks(kv_prefixes={"decoder/cross": wrong}))


def test_scales_equal_folding_into_kernels(tiny):
  config, params, enc, dec = tiny
  spec = _spec(config)
  kernels = {  # site -> (stack, module holding the equivalent kernel)
      "encoder/self/k": ("encoder", ("attention", "key")),
      "encoder/self/v": ("encoder", ("attention", "value")),
      "encoder/mlp": ("encoder", ("mlp", "wo")),
      "decoder/self/k": ("decoder", ("self_attention", "key")),
      "decoder/self/v": ("decoder", ("self_attention", "value")),
      "decoder/cross/k": ("decoder", ("encoder_decoder_attention", "key")),
      "decoder/cross/v": ("decoder", ("encoder_decoder_attention", "value")),
      "decoder/mlp": ("decoder", ("mlp", "wo")),
  }
  assert set(kernels) == set(spec.scale_sites)
  plain = np.asarray(_apply(config, params, enc, dec))
  for seed, (site, (stack, path)) in enumerate(kernels.items()):
    num_layers, width = spec.scale_shape(site)
    scale = jnp.asarray(np.random.RandomState(seed).rand(num_layers, width) + 0.5,
                        jnp.float32)
    out = np.asarray(_apply(config, params, enc, dec,
                            hooks=hooks_lib.Hooks(scales={site: scale})))
    folded = jax.tree_util.tree_map(lambda x: x, params)
    for i in range(num_layers):
      module = folded[stack][f"layers_{i}"][path[0]][path[1]]
      kernel = module["kernel"]
      if site.endswith("mlp"):  # [F, H]: scale the rows
        module["kernel"] = kernel * scale[i][:, None]
      else:  # [H, N, D]
        module["kernel"] = kernel * scale[i].reshape(config.num_heads, config.d_kv)
    np.testing.assert_allclose(out, np.asarray(_apply(config, folded, enc, dec)),
                               rtol=1e-5, atol=1e-5, err_msg=site)
    assert np.abs(out - plain).max() > 1e-4, site
  with pytest.raises(ValueError, match=r"scales\['encoder/mlp'\] has shape"):
    _apply(config, params, enc, dec,
           hooks=hooks_lib.Hooks(scales={"encoder/mlp": jnp.ones((2, 15))}))


def test_layer_inputs_get_each_layers_values(tiny):
  """Layer l of each stack receives values[l] (layer 0 included): adding
  values[l] to the hidden states entering layer l equals a hand-unrolled
  per-layer offset."""
  config, params, enc, dec = tiny
  calls = []

  def shift(value, x, mask):
    calls.append((x.shape, mask.shape))
    return x + value

  offsets = {s: _layer_values(config, s) * 0.25 + 0.1 for s in ("encoder", "decoder")}
  hooks = hooks_lib.Hooks(layer_inputs={
      s: hooks_lib.LayerInputs(offsets[s], shift) for s in offsets})
  out = _apply(config, params, enc, dec, hooks=hooks)
  b, t, s, h = enc.shape[0], enc.shape[1], dec.shape[1], config.d_model
  assert calls == [((b, t, h), (b, t))] * 2 + [((b, s, h), (b, s))] * 3
  assert np.abs(np.asarray(out) - np.asarray(_apply(config, params, enc, dec))).max() > 1e-3
  # The same offsets through a pytree of values: {"shift": [L], "scale": [L]}.
  tree = hooks_lib.Hooks(layer_inputs={
      s: hooks_lib.LayerInputs({"shift": offsets[s], "scale": jnp.ones_like(offsets[s])},
                               lambda v, x, m: x * v["scale"] + v["shift"])
      for s in offsets})
  np.testing.assert_allclose(np.asarray(_apply(config, params, enc, dec, hooks=tree)),
                             np.asarray(out), rtol=1e-6, atol=1e-6)
  bad = hooks_lib.Hooks(layer_inputs={"encoder": hooks_lib.LayerInputs(
      offsets["encoder"], lambda v, x, mask: x[:, 1:])})
  with pytest.raises(ValueError, match=r"layer_inputs returned shape .* at layer 0"):
    _apply(config, params, enc, dec, hooks=bad)


def test_cached_decoding_with_all_hooks_matches_full_pass(tiny):
  config, params, enc, dec = tiny
  batch = enc.shape[0]
  nd = config.num_heads * config.d_kv
  hooks = hooks_lib.Hooks(
      inputs={"encoder": lambda x, t, m: (jnp.concatenate([x[:, :2] * 2, x], 1),
                                          jnp.concatenate([m[:, :2], m], 1))},
      prefix={"decoder": _rand(20, (batch, 2, config.d_model))},
      kv_prefixes=_kv_hooks(config, batch),
      layer_inputs={s: hooks_lib.LayerInputs(_layer_values(config, s),
                                             lambda v, x, mask: x * (1.0 + 0.1 * v))
                    for s in ("encoder", "decoder")},
      scales={"decoder/self/k": jnp.full((3, nd), 1.5),
              "decoder/cross/v": jnp.full((3, nd), 0.7),
              "decoder/mlp": jnp.full((3, config.d_ff), 1.2)})
  _check_cached_matches_full(config, params, enc, dec, hooks, chunks=[2, 3, 1])


# ------------------------------------------------- dtypes, remat, dropout ----


def test_bfloat16_params_and_compute(tiny):
  config, params, enc, dec = tiny
  bf16 = dataclasses.replace(config, dtype="bfloat16", param_dtype="bfloat16")
  params_bf16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  dummy = jnp.ones((1, 1), jnp.int32)
  init_dtypes = {x.dtype for x in jax.tree_util.tree_leaves(nn.meta.unbox(jax.eval_shape(
      lambda: t5.T5(bf16).init(jax.random.PRNGKey(0), dummy, dummy))))}
  assert init_dtypes == {jnp.dtype(jnp.bfloat16)}
  logits = _apply(bf16, params_bf16, enc, dec)
  assert logits.dtype == jnp.float32
  # Same weights computed in float32: bf16 rounding (2**-8 relative) over a
  # 5-layer network stays within a few percent of the logit scale.
  want = np.asarray(_apply(config, jax.tree_util.tree_map(
      lambda x: x.astype(jnp.float32), params_bf16), enc, dec))
  err = np.abs(np.asarray(logits) - want).max() / np.abs(want).max()
  assert err < 0.05, err


def test_remat_policies_keep_values_and_gradients(tiny):
  _, _, enc, dec = tiny
  config = testing.tiny_config(num_encoder_layers=1, num_decoder_layers=1)
  params = testing.init_params(config)
  delta = _rand(30, (enc.shape[0], enc.shape[1], config.d_model), 0.1)

  def loss(delta, config):
    hooks = hooks_lib.Hooks(inputs={"encoder": lambda x, t, m: (x + delta, m)})
    return jnp.sum(_apply(config, params, enc, dec, hooks=hooks) ** 2)

  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  want_value, want_grad = value_and_grad(delta, config)
  for policy in ("full", "dots_saveable"):
    value, grad = value_and_grad(delta, dataclasses.replace(config, remat_policy=policy))
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-4,
                               atol=1e-4)


def test_dropout(tiny):
  _, _, enc, dec = tiny
  config = testing.tiny_config(num_encoder_layers=1, num_decoder_layers=1)
  params = testing.init_params(config)
  drop = dataclasses.replace(config, dropout_rate=0.3)
  plain = np.asarray(_apply(config, params, enc, dec))
  np.testing.assert_array_equal(np.asarray(_apply(drop, params, enc, dec)), plain)
  model = t5.T5(drop)
  run = jax.jit(lambda key: model.apply({"params": params}, enc, dec, deterministic=False,
                                        rngs={"dropout": key}))
  # rbg keys compile much faster on CPU than threefry ones.
  a, b = run(jax.random.key(1, impl="rbg")), run(jax.random.key(2, impl="rbg"))
  assert np.abs(np.asarray(a) - plain).max() > 1e-3
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_fused_attention_impls_match_the_xla_path(tiny):
  config, params, enc, dec = tiny
  hooks = hooks_lib.Hooks(kv_prefixes=_kv_hooks(config, batch=1))
  want = _apply(config, params, enc, dec, hooks=hooks, jit=True)
  fused = dataclasses.replace(config, attention_impl="fused_xla")
  np.testing.assert_allclose(
      np.asarray(_apply(fused, params, enc, dec, hooks=hooks, jit=True)),
      np.asarray(want), rtol=1e-5, atol=1e-5)
  if jax.default_backend() == "cpu":
    assert layers.select_attention_impl("auto", jnp.bfloat16, 64) == "xla"
    with pytest.raises(ValueError, match="attention_impl='cudnn' cannot be used"):
      layers.select_attention_impl("cudnn", jnp.bfloat16, 64)
