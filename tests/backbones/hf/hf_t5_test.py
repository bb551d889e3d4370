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
  with safe_open(os.path.join(path, hf_t5.WEIGHTS_NAME), "numpy") as f:
    return {k: f.get_tensor(k) for k in f.keys()}


def _write(path, tensors, config_json):
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, hf_t5.WEIGHTS_NAME), metadata={"format": "pt"})
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


@pytest.mark.parametrize("extra,scaled", [
    ({}, True),  # transformers 4 default: tied and scaled
    ({"tie_word_embeddings": False}, False),  # hub T5 1.1 configs
    ({"tie_word_embeddings": True, "scale_decoder_outputs": False}, False),  # transformers 5
    ({"tie_word_embeddings": False, "scale_decoder_outputs": True}, True)])
def test_load_config_scaling_follows_hf(tmp_path, ckpts, extra, scaled):
  base = {k: v for k, v in _config_json(ckpts["t5_1_1"]).items()
          if k not in ("tie_word_embeddings", "scale_decoder_outputs")}
  _write(tmp_path, {}, {**base, **extra})
  assert hf_t5.load_config(str(tmp_path)).tie_word_embeddings == scaled
  transformers = pytest.importorskip("transformers")
  assert transformers.T5Config.from_dict({**base, **extra}).scale_decoder_outputs == scaled


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
  for name in ("decoder.embed_tokens.weight", "lm_head.weight"):
    differ = dict(same)
    differ[name] = same[name] + 1.0
    with pytest.raises(hf_t5.CheckpointMismatchError, match=f"{name} differs"):
      hf_t5.load_params(_write(tmp_path / name, differ, cfg_json))


def test_scaled_checkpoint_with_untied_head_is_rejected(tmp_path):
  path = testing.make_hf_t5(tmp_path, ORIGINAL, seed=3, tie=False)
  assert hf_t5.load_config(path).tie_word_embeddings
  with pytest.raises(hf_t5.CheckpointMismatchError,
                     match="lm_head.weight differs from shared.weight; an untied lm_head"):
    hf_t5.load_params(path)


def test_unscaled_checkpoint_with_tied_head_copies_the_embedding(tmp_path):
  # What transformers 5 writes for T5Config(tie_word_embeddings=False).
  config = testing.tiny_config()
  path = testing.make_hf_t5(tmp_path, config, seed=4, tie=True)
  assert "lm_head.weight" not in _tensors(path)
  loaded, params = hf_t5.load_checkpoint(path)
  assert not loaded.tie_word_embeddings
  np.testing.assert_array_equal(params["logits_dense"]["kernel"],
                                params["token_embedder"]["embedding"].T)
  hf = testing.load_hf_model(path)
  torch = pytest.importorskip("torch")
  enc = np.array([[5, 6, 7, 1], [8, 1, 0, 0]])
  dec = np.array([[0, 3, 4], [0, 5, 9]])
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0).long(),
              decoder_input_ids=torch.tensor(dec)).logits.numpy()
  got = t5.T5(loaded).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
  # Declared untied but missing: an error.
  cfg_json = {**_config_json(path), "tie_word_embeddings": False}
  bare = _write(tmp_path / "bare", _tensors(path), cfg_json)
  with pytest.raises(hf_t5.CheckpointMismatchError, match="missing lm_head.weight"):
    hf_t5.load_params(bare)


def test_missing_files_are_named(tmp_path, ckpts):
  with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
    hf_t5.load_params(str(tmp_path), testing.tiny_config())
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_t5.load_config(str(tmp_path))


# ------------------------------------------------------------ round trip ----


@pytest.mark.parametrize("name", ["t5_1_1", "original"])
def test_round_trip_is_bit_identical_and_readable_by_transformers(tmp_path, ckpts, name):
  config, params = hf_t5.load_checkpoint(ckpts[name])
  out = str(tmp_path / "export")
  hf_t5.save_checkpoint(params, config, out)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  config2, params2 = hf_t5.load_checkpoint(out)
  assert config2 == config
  _assert_trees_equal(params2, params)
  original = _tensors(ckpts[name])
  exported = _tensors(out)
  assert set(exported) == set(original)
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  # transformers reads the export and computes the same function.
  torch = pytest.importorskip("torch")
  enc = torch.tensor([[5, 6, 7, 1], [8, 1, 0, 0]])
  dec = torch.tensor([[0, 3, 4], [0, 5, 9]])
  with torch.no_grad():
    run = lambda m: m(input_ids=enc, attention_mask=(enc != 0).long(),
                      decoder_input_ids=dec).logits.numpy()
    np.testing.assert_array_equal(run(testing.load_hf_model(out)),
                                  run(testing.load_hf_model(ckpts[name])))


def test_sharded_export_and_import(tmp_path, ckpts):
  config, params = hf_t5.load_checkpoint(ckpts["t5_1_1"])
  out = str(tmp_path / "sharded")
  hf_t5.save_checkpoint(params, config, out, max_shard_bytes=8_000)
  files = sorted(os.listdir(out))
  shards = [f for f in files if f.startswith("model-")]
  assert len(shards) > 2 and hf_t5.WEIGHTS_NAME not in files
  assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
  with open(os.path.join(out, hf_t5.INDEX_NAME)) as f:
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
  with safe_open(os.path.join(out, hf_t5.WEIGHTS_NAME), "numpy") as f:
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
