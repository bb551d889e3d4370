"""Tests of ptuning_jax.backbones.hf.t5: config mapping, strict loading, export."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from ptuning_jax.backbones.hf import t5 as hf_t5
from ptuning_jax.backbones.hf import tensors as hf_tensors
from ptuning_jax.training import partitioning
from ptuning_jax.backbones import t5
from ptuning_jax import testing

pytest.importorskip("torch")
pytest.importorskip("transformers")

ORIGINAL = t5.original_t5_config(
    "small", vocab_size=53, d_model=8, num_heads=2, d_kv=4, d_ff=12,
    num_encoder_layers=1, num_decoder_layers=2, relative_attention_num_buckets=6,
    relative_attention_max_distance=11)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  """{"t5_1_1": dir, "original": dir} of random HF checkpoints."""
  root = tmp_path_factory.mktemp("ckpts")
  return {"t5_1_1": testing.make_hf_t5(root / "a", testing.tiny_config(), seed=1),
          "original": testing.make_hf_t5(root / "b", ORIGINAL, seed=2)}


def _tensors(path):
  with safe_open(os.path.join(path, hf_tensors.WEIGHTS_NAME), "numpy") as f:
    return {k: f.get_tensor(k) for k in f.keys()}


def _write(path, tensors, config_json):
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, hf_tensors.WEIGHTS_NAME), metadata={"format": "pt"})
  with open(os.path.join(path, hf_t5.CONFIG_NAME), "w") as f:
    json.dump(config_json, f)
  return str(path)


def _config_json(path):
  with open(os.path.join(path, hf_t5.CONFIG_NAME)) as f:
    return json.load(f)


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------- config ----


def test_load_config_maps_hf_fields(ckpts):
  for name, want in (("t5_1_1", testing.tiny_config()), ("original", ORIGINAL)):
    config = hf_t5.load_config(ckpts[name])
    assert config == dataclasses.replace(want, dropout_rate=config.dropout_rate)


@pytest.mark.parametrize("model_type,extra,scaled", [
    ("t5", {}, True),  # transformers 4 default: tied and scaled
    ("t5", {"tie_word_embeddings": False}, False),  # hub T5 1.1 configs
    ("t5", {"tie_word_embeddings": True, "scale_decoder_outputs": False}, False),  # 5
    ("t5", {"tie_word_embeddings": False, "scale_decoder_outputs": True}, True),
    ("mt5", {}, False),  # MT5ForConditionalGeneration never scales
    ("mt5", {"tie_word_embeddings": False}, False),  # hub mT5 configs
    ("mt5", {"tie_word_embeddings": True}, False)])  # mT5 saved by transformers 5
def test_load_config_scaling_follows_hf(tmp_path, ckpts, model_type, extra, scaled):
  base = {k: v for k, v in _config_json(ckpts["t5_1_1"]).items()
          if k not in ("tie_word_embeddings", "scale_decoder_outputs")}
  _write(tmp_path, {}, {**base, **extra, "model_type": model_type})
  config = hf_t5.load_config(str(tmp_path))
  assert config.scales_outputs == scaled and config.model_type == model_type
  transformers = pytest.importorskip("transformers")
  if model_type == "t5":
    assert transformers.T5Config.from_dict({**base, **extra}).scale_decoder_outputs == scaled


def test_mt5_ignores_a_scale_key_as_transformers_does(tmp_path, ckpts, caplog):
  base = _config_json(ckpts["t5_1_1"])
  _write(tmp_path, {}, {**base, "model_type": "mt5", "scale_decoder_outputs": True})
  assert not hf_t5.load_config(str(tmp_path)).scales_outputs
  assert "scale_decoder_outputs=true is ignored" in caplog.text


def test_t5_config_separates_tying_from_scaling():
  table = {(tie, model_type): t5.T5Config(tie_word_embeddings=tie, model_type=model_type
                                          ).scales_outputs
           for tie in (True, False) for model_type in ("t5", "mt5")}
  assert table == {(True, "t5"): True, (False, "t5"): False,
                   (True, "mt5"): False, (False, "mt5"): False}
  assert t5.T5Config(scale_decoder_outputs=True).scales_outputs
  assert not t5.T5Config(tie_word_embeddings=True, scale_decoder_outputs=False).scales_outputs
  assert t5.mt5_config("small").model_type == "mt5"
  with pytest.raises(ValueError, match="MT5ForConditionalGeneration never scales"):
    t5.T5Config(model_type="mt5", scale_decoder_outputs=True)
  with pytest.raises(ValueError, match="model_type='umt5'"):
    t5.T5Config(model_type="umt5")
  with pytest.raises(ValueError, match="scale_decoder_outputs must be None or a bool"):
    t5.T5Config(scale_decoder_outputs=1)


@pytest.mark.parametrize("key,value,match", [
    ("model_type", "umt5", "model_type='umt5'"),
    ("feed_forward_proj", "gated-silu", "feed_forward_proj='gated-silu'"),
    ("is_decoder", True, "is_decoder=True"),
    ("dense_act_fn", "silu", "dense_act_fn='silu'"),
    ("num_heads", "8", "num_heads='8'"),
    ("relative_attention_num_buckets", 2, "relative_attention_num_buckets")])
def test_load_config_rejects_unsupported_values(tmp_path, ckpts, key, value, match):
  _write(tmp_path, {}, {**_config_json(ckpts["t5_1_1"]), key: value})
  with pytest.raises(ValueError, match=match) as info:
    hf_t5.load_config(str(tmp_path))
  if key != "relative_attention_num_buckets":  # T5Config's own check names the field
    assert "config.json" in str(info.value)


# ------------------------------------------------------- strict loading ----


def test_every_tensor_maps_to_exactly_one_param(ckpts):
  for name in ("t5_1_1", "original"):
    config = hf_t5.load_config(ckpts[name])
    maps = hf_t5.tensor_maps(config)
    assert len({m.hf_name for m in maps}) == len(maps) == len({m.path for m in maps})
    assert {m.hf_name for m in maps} == set(_tensors(ckpts[name]))
    params = testing.init_params(config)
    assert len(jax.tree_util.tree_leaves(params)) == len(maps)


def test_loaded_values_follow_the_layout(ckpts):
  config, params = hf_t5.load_checkpoint(ckpts["t5_1_1"])
  hf = _tensors(ckpts["t5_1_1"])
  n, d, h = config.num_heads, config.d_kv, config.d_model
  layer = params["decoder"]["layers_1"]
  np.testing.assert_array_equal(
      layer["encoder_decoder_attention"]["key"]["kernel"],
      hf["decoder.block.1.layer.1.EncDecAttention.k.weight"].T.reshape(h, n, d))
  np.testing.assert_array_equal(
      layer["self_attention"]["out"]["kernel"],
      hf["decoder.block.1.layer.0.SelfAttention.o.weight"].T.reshape(n, d, h))
  np.testing.assert_array_equal(layer["mlp"]["wi_1"]["kernel"],
                                hf["decoder.block.1.layer.2.DenseReluDense.wi_1.weight"].T)
  np.testing.assert_array_equal(layer["pre_cross_attention_layer_norm"]["scale"],
                                hf["decoder.block.1.layer.1.layer_norm.weight"])
  np.testing.assert_array_equal(params["logits_dense"]["kernel"], hf["lm_head.weight"].T)
  assert not np.array_equal(hf["lm_head.weight"], hf["shared.weight"])


def test_mismatch_error_lists_every_offending_tensor(tmp_path, ckpts):
  tensors = _tensors(ckpts["t5_1_1"])
  del tensors["encoder.block.1.layer.0.SelfAttention.q.weight"]
  tensors["decoder.block.2.layer.2.DenseReluDense.wo.weight"] = np.zeros((12, 21), np.float32)
  tensors["encoder.block.9.layer.0.layer_norm.weight"] = np.zeros((12,), np.float32)
  path = _write(tmp_path, tensors, _config_json(ckpts["t5_1_1"]))
  with pytest.raises(hf_t5.CheckpointMismatchError) as info:
    hf_t5.load_params(path)
  message = str(info.value)
  assert isinstance(info.value, ValueError) and "3 problem(s)" in message
  assert "missing encoder.block.1.layer.0.SelfAttention.q.weight: expected shape [15, 12]" in message
  assert ("mis-shaped decoder.block.2.layer.2.DenseReluDense.wo.weight: expected [12, 20], "
          "found [12, 21]") in message
  assert "unexpected encoder.block.9.layer.0.layer_norm.weight: shape [12]" in message


def test_config_mismatch_is_reported_per_tensor(ckpts):
  wrong = dataclasses.replace(testing.tiny_config(), d_ff=22)
  with pytest.raises(hf_t5.CheckpointMismatchError, match="wi_0.weight: expected "
                     r"\[22, 12\], found \[20, 12\]"):
    hf_t5.load_params(ckpts["t5_1_1"], wrong)


def test_tied_embedding_aliases(tmp_path, ckpts):
  tensors = _tensors(ckpts["original"])
  assert "lm_head.weight" not in tensors  # transformers drops tied copies
  _, want = hf_t5.load_checkpoint(ckpts["original"])
  cfg_json = _config_json(ckpts["original"])
  ignored = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"
  same = {**tensors, "encoder.embed_tokens.weight": tensors["shared.weight"].copy(),
          "decoder.embed_tokens.weight": tensors["shared.weight"].copy(),
          "lm_head.weight": tensors["shared.weight"].copy(),
          ignored: np.zeros((6, 2), np.float32)}
  _, got = hf_t5.load_checkpoint(_write(tmp_path / "same", same, cfg_json))
  _assert_trees_equal(got, want)
  only_alias = {k: v for k, v in same.items() if k != "shared.weight"}
  _, got = hf_t5.load_checkpoint(_write(tmp_path / "alias", only_alias, cfg_json))
  _assert_trees_equal(got, want)
  differ = {**same, "decoder.embed_tokens.weight": same["shared.weight"] + 1.0}
  with pytest.raises(hf_t5.CheckpointMismatchError,
                     match="decoder.embed_tokens.weight differs.*must be identical"):
    hf_t5.load_params(_write(tmp_path / "embed", differ, cfg_json))
  # A different lm_head is a separate head (as transformers 5 unties it); a
  # config that says tied cannot take it.
  path = _write(tmp_path / "head", {**same, "lm_head.weight": same["shared.weight"] + 1.0},
                cfg_json)
  assert not hf_t5.load_config(path).tie_word_embeddings
  with pytest.raises(hf_t5.CheckpointMismatchError,
                     match="lm_head.weight differs from shared.weight; the config ties"):
    hf_t5.load_params(path, ORIGINAL)


def test_untied_config_on_a_tied_checkpoint_copies_the_embedding(tmp_path):
  # What a gin run does: T5 1.1 config (untied) + a transformers-5 checkpoint
  # of the same model built from a config (tied, no lm_head.weight).
  config = testing.tiny_config()
  path = testing.make_hf_t5(tmp_path, config, seed=4, tie=True)
  assert "lm_head.weight" not in _tensors(path)
  assert hf_t5.load_config(path) == dataclasses.replace(
      config, tie_word_embeddings=True, scale_decoder_outputs=False)
  params = hf_t5.load_params(path, config)
  np.testing.assert_array_equal(params["logits_dense"]["kernel"],
                                params["token_embedder"]["embedding"].T)
  enc, dec = _batch()
  np.testing.assert_allclose(_ours(config, params, enc, dec),
                             _transformers(testing.load_hf_model(path), enc, dec),
                             rtol=1e-4, atol=1e-4)
  # Declared untied but missing: an error.
  cfg_json = {**_config_json(path), "tie_word_embeddings": False}
  bare = _write(tmp_path / "bare", _tensors(path), cfg_json)
  assert not hf_t5.load_config(bare).tie_word_embeddings
  with pytest.raises(hf_t5.CheckpointMismatchError, match="missing lm_head.weight"):
    hf_t5.load_params(bare)


def test_missing_files_are_named(tmp_path, ckpts):
  with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
    hf_t5.load_params(str(tmp_path), testing.tiny_config())
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_t5.load_config(str(tmp_path))


# ------------------------------------------------------------ round trip ----


def _batch():
  enc = np.array([[5, 6, 7, 1], [8, 1, 0, 0]])
  dec = np.array([[0, 3, 4], [0, 5, 9]])
  return enc, dec


def _ours(config, params, enc, dec):
  return np.asarray(t5.T5(config).apply({"params": params}, jnp.asarray(enc),
                                        jnp.asarray(dec)))


def _transformers(model, enc, dec):
  torch = pytest.importorskip("torch")
  enc, dec = torch.tensor(enc), torch.tensor(dec)
  with torch.no_grad():
    return model(input_ids=enc, attention_mask=(enc != 0).long(),
                 decoder_input_ids=dec).logits.numpy()


def _resave(src, dst):
  """What transformers 5 writes when it loads `src` and saves it again."""
  testing.load_hf_model(src).save_pretrained(dst)
  return str(dst)


# name -> (tie_word_embeddings, scales_outputs, model_type) as transformers 5
# loads it.
LAYOUTS = {
    "original": (True, True, "t5"),
    "original_untied_head": (False, True, "t5"),
    "t5_1_1_hub": (False, False, "t5"),
    "t5_1_1_from_config": (True, False, "t5"),
    "t5_1_1_hub_resaved": (False, False, "t5"),
    "mt5_hub": (False, False, "mt5"),
    "mt5_from_config": (True, False, "mt5"),
    "mt5_hub_resaved": (False, False, "mt5"),
}
# name -> config.json's (tie_word_embeddings, scale_decoder_outputs or None if
# absent): what defines each layout besides whether lm_head.weight is stored.
CONFIG_KEYS = {
    "original": (True, True),
    "original_untied_head": (False, True),
    "t5_1_1_hub": (False, False),
    "t5_1_1_from_config": (True, False),
    "t5_1_1_hub_resaved": (True, False),
    "mt5_hub": (False, None),
    "mt5_from_config": (True, None),
    "mt5_hub_resaved": (True, None),
}
MT5 = t5.mt5_config("tiny", vocab_size=61, d_model=10, num_heads=2, d_kv=3, d_ff=14,
                    num_encoder_layers=2, num_decoder_layers=1,
                    relative_attention_num_buckets=6, relative_attention_max_distance=11)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, ckpts):
  """name -> checkpoint dir of every T5 / mT5 layout in use (LAYOUTS)."""
  root = tmp_path_factory.mktemp("layouts")
  out = {"original": ckpts["original"], "t5_1_1_hub": ckpts["t5_1_1"],
         "original_untied_head": testing.make_hf_t5(root / "ou", ORIGINAL, seed=3, tie=False),
         "t5_1_1_from_config": testing.make_hf_t5(root / "tc", testing.tiny_config(),
                                                  seed=4, tie=True),
         "mt5_hub": testing.make_hf_t5(root / "mh", MT5, seed=6, tie=False),
         "mt5_from_config": testing.make_hf_t5(root / "mc", MT5, seed=7, tie=True)}
  out["t5_1_1_hub_resaved"] = _resave(out["t5_1_1_hub"], root / "tr")
  out["mt5_hub_resaved"] = _resave(out["mt5_hub"], root / "mr")
  return out


def _assert_layout(name, path):
  """The config.json keys and lm_head presence that define layout `name`."""
  cfg = _config_json(path)
  assert cfg["model_type"] == LAYOUTS[name][2]
  assert (cfg["tie_word_embeddings"], cfg.get("scale_decoder_outputs")) == CONFIG_KEYS[name]
  assert ("lm_head.weight" in _tensors(path)) == (not LAYOUTS[name][0])


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_loads_matches_transformers_and_round_trips(tmp_path, layouts, name):
  path = layouts[name]
  _assert_layout(name, path)
  config, params = hf_t5.load_checkpoint(path)
  assert (config.tie_word_embeddings, config.scales_outputs,
          config.model_type) == LAYOUTS[name]
  enc, dec = _batch()
  hf = testing.load_hf_model(path)
  assert type(hf).__name__ == {"t5": "T5", "mt5": "MT5"}[config.model_type] + (
      "ForConditionalGeneration")
  want = _transformers(hf, enc, dec)
  np.testing.assert_allclose(_ours(config, params, enc, dec), want, rtol=1e-4, atol=1e-4)
  # Export keeps the model type and every tensor, bit for bit.
  out = str(tmp_path / "export")
  hf_t5.save_checkpoint(params, config, out)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  exported = _config_json(out)
  assert exported["model_type"] == config.model_type
  assert exported["architectures"] == [type(hf).__name__]
  config2, params2 = hf_t5.load_checkpoint(out)
  assert config2 == config
  _assert_trees_equal(params2, params)
  original, written = _tensors(path), _tensors(out)
  assert set(written) == set(original)
  for key, value in original.items():
    np.testing.assert_array_equal(written[key], value, err_msg=key)
  # transformers reads the export as the same model and computes the same function.
  np.testing.assert_array_equal(_transformers(testing.load_hf_model(out), enc, dec), want)


def test_sharded_export_and_import(tmp_path, ckpts):
  config, params = hf_t5.load_checkpoint(ckpts["t5_1_1"])
  out = str(tmp_path / "sharded")
  hf_t5.save_checkpoint(params, config, out, max_shard_bytes=8_000)
  files = sorted(os.listdir(out))
  shards = [f for f in files if f.startswith("model-")]
  assert len(shards) > 2 and hf_tensors.WEIGHTS_NAME not in files
  assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
  with open(os.path.join(out, hf_tensors.INDEX_NAME)) as f:
    index = json.load(f)
  assert set(index["weight_map"].values()) == set(shards)
  assert index["metadata"]["total_size"] == 4 * t5.num_params(config)
  for shard in shards:  # at most 8 kB of tensors, unless a single bigger tensor
    with safe_open(os.path.join(out, shard), "numpy") as f:
      sizes = [f.get_tensor(k).nbytes for k in f.keys()]
    assert len(sizes) == 1 or sum(sizes) <= 8_000, (shard, sizes)
  _, params2 = hf_t5.load_checkpoint(out)
  _assert_trees_equal(params2, params)
  hf = testing.load_hf_model(out)  # transformers reads our index too
  assert hf.config.d_ff == config.d_ff


def test_bfloat16_round_trip(tmp_path, ckpts):
  config, params = hf_t5.load_checkpoint(ckpts["original"], param_dtype="bfloat16")
  assert config.param_dtype == "bfloat16"
  assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  _, f32 = hf_t5.load_checkpoint(ckpts["original"])
  _assert_trees_equal(params, jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), f32))
  out = str(tmp_path / "bf16")
  hf_t5.save_checkpoint(params, config, out)
  assert _config_json(out)["dtype"] == "bfloat16"
  config2, params2 = hf_t5.load_checkpoint(out, param_dtype="bfloat16")
  _assert_trees_equal(params2, params)
  with safe_open(os.path.join(out, hf_tensors.WEIGHTS_NAME), "numpy") as f:
    assert f.get_tensor("shared.weight").dtype == jnp.bfloat16


def test_save_rejects_params_of_another_config(tmp_path, ckpts):
  config, params = hf_t5.load_checkpoint(ckpts["t5_1_1"])
  tied = dataclasses.replace(config, tie_word_embeddings=True)
  with pytest.raises(hf_t5.CheckpointMismatchError, match="unexpected.*logits_dense"):
    hf_t5.save_checkpoint(params, tied, str(tmp_path))


# ---------------------------------------------------------------- meshes ----


@pytest.mark.parametrize("shape", [(8, 1), (2, 4)])
def test_load_places_tensors_into_their_shardings(tmp_path, shape):
  # Dims divisible by 4 so every "model"-sharded axis splits evenly.
  config = testing.tiny_config(vocab_size=104, num_heads=4, d_ff=24)
  path = testing.make_hf_t5(tmp_path, config, seed=5)
  mesh = partitioning.make_mesh(*shape)
  rules = partitioning.standard_logical_axis_rules()
  params = hf_t5.load_params(path, mesh=mesh, rules=rules)
  _, plain = hf_t5.load_checkpoint(path)
  _assert_trees_equal(params, plain)
  spec = lambda x: x.sharding.spec
  model_axis = "model"
  assert spec(params["token_embedder"]["embedding"])[0] == model_axis
  assert spec(params["encoder"]["layers_0"]["attention"]["query"]["kernel"])[1] == model_axis
  assert spec(params["decoder"]["layers_2"]["mlp"]["wo"]["kernel"])[0] == model_axis
  for leaf in jax.tree_util.tree_leaves(params):
    assert leaf.sharding.mesh.shape == dict(zip(("data", "model"), shape))


def test_indivisible_dims_are_replicated(ckpts):
  # tiny: vocab 101 and 3 heads cannot be split over model=4; d_ff=20 can.
  params = hf_t5.load_params(ckpts["t5_1_1"], mesh=partitioning.make_mesh(2, 4))
  _, plain = hf_t5.load_checkpoint(ckpts["t5_1_1"])
  _assert_trees_equal(params, plain)
  layer = params["encoder"]["layers_0"]
  assert params["token_embedder"]["embedding"].sharding.spec[0] is None
  assert layer["attention"]["query"]["kernel"].sharding.spec[1] is None
  assert layer["mlp"]["wi_0"]["kernel"].sharding.spec[1] == "model"
