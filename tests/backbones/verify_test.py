"""`ptuning-jax verify`: passes on every supported layout (random T5 / mT5 /
BERT / RoBERTa, the real all-MiniLM-L6-v2), fails naming the culprit on
corrupted checkpoints and loader bugs, and runs ours only without transformers."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from ptuning_jax import cli
from ptuning_jax import testing
from ptuning_jax.backbones import t5
from ptuning_jax.backbones import verify
from ptuning_jax.backbones.hf import bert as hf_bert
from ptuning_jax.backbones.hf import t5 as hf_t5
from ptuning_jax.backbones.hf import tensors as hf_tensors

ORIGINAL = t5.original_t5_config(
    "small", vocab_size=53, d_model=8, num_heads=2, d_kv=4, d_ff=12,
    num_encoder_layers=1, num_decoder_layers=2, relative_attention_num_buckets=6,
    relative_attention_max_distance=11)
MT5 = t5.mt5_config("tiny", vocab_size=61, d_model=10, num_heads=2, d_kv=3, d_ff=14,
                    num_encoder_layers=2, num_decoder_layers=1,
                    relative_attention_num_buckets=6, relative_attention_max_distance=11)
T5_LAYOUTS = {  # name -> (config, whether lm_head is tied)
    "t5_1_1": (testing.tiny_config(), False),
    "original": (ORIGINAL, True),
    "mt5_hub": (MT5, False),
    "mt5_from_config": (MT5, True),
}


def _tensors(path) -> dict:
  with safe_open(os.path.join(path, hf_tensors.WEIGHTS_NAME), "numpy") as f:
    return {k: f.get_tensor(k) for k in f.keys()}


def _copy_with(src, dst, tensors) -> str:
  """A copy of checkpoint `src` (its config.json) holding `tensors`."""
  os.makedirs(dst)
  shutil.copy(os.path.join(src, "config.json"), dst)
  save_file(tensors, os.path.join(dst, hf_tensors.WEIGHTS_NAME), metadata={"format": "pt"})
  return str(dst)


def _run_cli(argv, capsys):
  code = cli.main(["verify", *argv])
  out = capsys.readouterr()
  return code, out.out, out.err


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  root = tmp_path_factory.mktemp("verify_t5")
  return {name: testing.make_hf_t5(root / name, config, seed=i, tie=tie)
          for i, (name, (config, tie)) in enumerate(T5_LAYOUTS.items())}


@pytest.fixture(scope="module")
def bert_dirs(tmp_path_factory):
  """Random BertForPreTraining (`bert.` prefix, pooler, MLM, NSP heads) and
  RobertaForMaskedLM (no pooler, `lm_head.*`), odd shapes."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  root = tmp_path_factory.mktemp("verify_bert")
  torch.manual_seed(0)
  bert_config = transformers.BertConfig(
      vocab_size=41, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
      intermediate_size=20, max_position_embeddings=16, type_vocab_size=2)
  transformers.BertForPreTraining(bert_config).save_pretrained(root / "bert")
  roberta_config = transformers.RobertaConfig(
      vocab_size=37, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=20, max_position_embeddings=20, type_vocab_size=1,
      pad_token_id=1, layer_norm_eps=1e-5)
  transformers.RobertaForMaskedLM(roberta_config).save_pretrained(root / "roberta")
  return {"bert": str(root / "bert"), "roberta": str(root / "roberta")}


def _minilm_dir():
  try:
    return str(hf_bert.all_minilm_l6_v2_dir())
  except FileNotFoundError as e:
    pytest.skip(str(e))


# ------------------------------------ pass ------------------------------------


@pytest.mark.parametrize("name", sorted(T5_LAYOUTS))
def test_t5_layouts_pass(t5_dirs, name):
  report = verify.run(t5_dirs[name])
  assert report.ok, report.lines()
  assert report.transformers.startswith("transformers ")
  outputs = {d.stage.name: d for d in report.diffs if d.stage.output}
  assert set(outputs) == {"logits", "log_softmax(logits)"}
  assert all(d.max_abs <= verify.TOLERANCE and not d.diverged for d in report.diffs)
  assert report.decode.agree and "agree token for token" in report.decode.detail
  config = report.family.config
  hidden = [d for d in report.diffs if not d.stage.output]
  assert len(hidden) == config.num_encoder_layers + config.num_decoder_layers + 2
  assert config.model_type == ("mt5" if name.startswith("mt5") else "t5")


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_bert_family_passes(bert_dirs, name):
  report = verify.run(bert_dirs[name])
  assert report.ok, report.lines()
  outputs = {d.stage.name for d in report.diffs if d.stage.output}
  want = {"last_hidden_state", "mlm_logits", "log_softmax(mlm_logits)"}
  assert outputs == (want | {"pooler_output"} if name == "bert" else want)
  assert report.decode is None


def test_minilm_passes_through_the_cli(capsys):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  code, out, err = _run_cli([_minilm_dir()], capsys)
  assert code == 0, out + err
  for line in ("against transformers", "last_hidden_state", "pooler_output",
               "hidden_states[0..6] max |Δ|", "OK: every output within 1e-04"):
    assert line in out
  assert "mlm_logits" not in out  # a sentence-embedding checkpoint: no MLM head


# ------------------------------------ fail ------------------------------------


def test_loader_bug_fails_naming_logit_layer_and_tensor(t5_dirs, monkeypatch, capsys):
  # Ours reads one layer tensor wrongly; transformers reads the file.
  bad = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
  get = hf_tensors.TensorSource.get

  def perturbed(self, name):
    array = get(self, name)
    if name == bad:
      array = array.copy()
      array[3, 7] += 0.5
    return array

  monkeypatch.setattr(hf_tensors.TensorSource, "get", perturbed)
  code, out, err = _run_cli([t5_dirs["t5_1_1"]], capsys)
  assert code == 1
  assert err.count("\n") == 1 and "ptuning-jax verify: error (VerificationError)" in err
  assert "logits max |Δ|" in err and "> 1e-04 at row" in err
  assert "first divergent hidden state: encoder hidden_states[2]" in err
  assert f"{bad} loaded differently: max |Δ| 5.0e-01 at [3, 7]" in err
  assert "FAILED: logits max |Δ|" in out and "encoder hidden_states[0..2]" in out


def test_old_mt5_scaling_bug_is_caught_in_the_output_head(t5_dirs, monkeypatch):
  # Bug 1 as it was: a tied mT5 read as original T5 (scaled outputs).
  load = hf_t5.load_checkpoint

  def as_original_t5(ckpt_dir, **kwargs):
    config, params = load(ckpt_dir, **kwargs)
    return dataclasses.replace(config, model_type="t5"), params

  monkeypatch.setattr(hf_t5, "load_checkpoint", as_original_t5)
  report = verify.run(t5_dirs["mt5_from_config"])
  assert not report.ok
  assert report.failures[0].startswith("logits max |Δ|")
  assert not any(d.diverged for d in report.diffs if not d.stage.output)
  assert report.diagnosis[0] == ("no hidden state diverges; the difference arises in: "
                                 "logits (output head (shared.weight, scaled by d_model**-0.5))")


def test_corrupted_minilm_copy_fails_naming_layer_and_tensor(tmp_path, capsys):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  src = _minilm_dir()
  tensors = _tensors(src)
  bad = "encoder.layer.3.attention.self.value.weight"
  tensors[bad][5, 9] = np.nan
  path = _copy_with(src, tmp_path / "minilm", tensors)
  code, out, err = _run_cli([path], capsys)
  assert code == 1
  assert "last_hidden_state is not finite" in err
  assert ("first non-finite or divergent hidden state: hidden_states[4] "
          "(output of encoder layer 3)") in err
  assert f"{bad} holds 1 non-finite value(s) in ours" in err
  assert "hidden_states[0..6] max |Δ|" in out and "inf*" in out


def test_tensor_mismatch_is_one_clear_line(t5_dirs, tmp_path, capsys):
  tensors = _tensors(t5_dirs["original"])
  tensors["decoder.embed_tokens.weight"] = tensors["shared.weight"] + 1.0
  path = _copy_with(t5_dirs["original"], tmp_path / "alias", tensors)
  code, _, err = _run_cli([path], capsys)
  assert code == 1 and err.count("\n") == 1
  assert "CheckpointMismatchError" in err and "decoder.embed_tokens.weight differs" in err


def test_missing_dir_and_unsupported_model_type(tmp_path, capsys):
  code, _, err = _run_cli([str(tmp_path / "nope")], capsys)
  assert code == 1 and "nope is not a checkpoint directory" in err
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  code, _, err = _run_cli([str(tmp_path)], capsys)
  assert code == 1 and err.count("\n") == 1
  assert "config.json: model_type='gpt2' is not supported" in err


# ------------------------------ without transformers ------------------------------


@pytest.fixture()
def no_transformers(monkeypatch):
  monkeypatch.setattr(verify, "_transformers", lambda: None)


def test_without_transformers_ours_runs_and_says_skipped(tmp_path, no_transformers, capsys):
  config = testing.tiny_config()
  hf_t5.save_checkpoint(testing.init_params(config, seed=1), config, str(tmp_path))
  code, out, _ = _run_cli([str(tmp_path)], capsys)
  assert code == 0
  assert "transformers comparison SKIPPED" in out
  assert "OK: outputs finite (not compared)" in out


def test_without_transformers_non_finite_fails(tmp_path, no_transformers, capsys):
  config = testing.tiny_config()
  src = str(tmp_path / "src")
  hf_t5.save_checkpoint(testing.init_params(config, seed=1), config, src)
  tensors = _tensors(src)
  bad = "decoder.block.1.layer.1.EncDecAttention.v.weight"
  tensors[bad][0, 0] = np.inf
  code, out, err = _run_cli([_copy_with(src, tmp_path / "bad", tensors)], capsys)
  assert code == 1 and "SKIPPED" in out
  assert "ours' decoder hidden_states[2] holds" in err
  assert "first non-finite: decoder hidden_states[2] (output of decoder block 1)" in err
  assert f"{bad} holds 1 non-finite value(s) in ours" in err


# ------------------------------ greedy decodes ------------------------------


class _StubFamily:
  config = t5.T5Config(eos_token_id=1)

  def __init__(self, logits):
    self.logits = logits

  def step_logits(self, batch, row, prefix):
    del batch, row, prefix
    return self.logits


def test_decodes_compare_until_eos_and_excuse_only_near_ties():
  ours = np.array([[5, 1, 0, 0], [4, 6, 7, 8]])
  same = np.array([[5, 1, 3, 3], [4, 6, 7, 8]])  # after EOS nothing counts
  assert verify.compare_decodes(_StubFamily(None), {}, ours, same, 1e-4).agree
  theirs = np.array([[5, 1, 0, 0], [4, 6, 9, 8]])
  logits = np.zeros(10, np.float32)
  logits[7], logits[9] = 2.0, 2.0 - 5e-5
  check = verify.compare_decodes(_StubFamily(logits), {}, ours, theirs, 1e-4)
  assert not check.agree and check.near_tie
  assert "row 1, step 2: ours 7, transformers 9" in check.detail
  logits[9] = 1.0
  check = verify.compare_decodes(_StubFamily(logits), {}, ours, theirs, 1e-4)
  assert not check.agree and not check.near_tie
