"""The `ptuning-jax` command line end to end on tiny local checkpoints."""
import glob
import importlib
import importlib.metadata
import json
import os
import pathlib
import re
import sys

import pytest

import ptuning_jax
from ptuning_jax import cli

CONFIG = "configs/synthetic_freq_prompt.gin"
REPO = pathlib.Path(__file__).resolve().parents[1]


def _flags(backbone, model_dir, *extra):
  return ["--gin_file", CONFIG, f"--gin.CHECKPOINT_DIR='{backbone}'",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=4",
          "--gin.EVAL_EVERY=4", "--gin.CHECKPOINT_EVERY=2",
          "--gin.EVAL_MAX_EXAMPLES=32", "--gin.PROMPT_LENGTH=3", *extra]


def test_help(capsys):
  assert cli.main(["--help"]) == 0
  assert "ptuning-jax train" in capsys.readouterr().out


def test_unknown_command(capsys):
  assert cli.main(["trian"]) == 2
  assert "unknown command 'trian'" in capsys.readouterr().err


def test_version(capsys, monkeypatch):
  assert cli.main(["--version"]) == 0
  assert capsys.readouterr().out == f"ptuning-jax {importlib.metadata.version('ptuning_jax')}\n"

  def not_installed(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(importlib.metadata, "version", not_installed)
  assert cli.main(["--version"]) == 0
  assert capsys.readouterr().out == f"ptuning-jax {ptuning_jax.__version__}\n"


def test_tensorflow_log_level_set_by_main_only(monkeypatch):
  """The CLI (not the library) silences TensorFlow's C++ errors such as
  "failed call to cuInit" (level 3); a user's own setting is kept."""
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  importlib.reload(cli)
  assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
  assert cli.main(["--version"]) == 0
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
  assert cli.main(["--version"]) == 0
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


@pytest.fixture
def core_only(monkeypatch):
  """A core-only install: the data extra's modules cannot be imported (nor,
  so, `ptuning_jax.data.seqio`, even where an earlier test imported it)."""
  for name in list(sys.modules):
    if name.startswith("ptuning_jax.data.seqio"):
      monkeypatch.delitem(sys.modules, name)
  data = importlib.import_module("ptuning_jax.data")
  if hasattr(data, "seqio"):  # restored after the test
    monkeypatch.setattr(data, "seqio", data.seqio)
  for name in ("tensorflow", "seqio", "tensorflow_datasets", "tensorflow_text"):
    monkeypatch.setitem(sys.modules, name, None)


NEEDS_DATA = 'needs the data extra (TensorFlow, seqio): pip install -e ".[data]"'


@pytest.mark.parametrize("argv", [
    ["tasks"], ["inspect", "synthetic_freq"],
    ["train", "--gin_file", CONFIG, "--gin.MODEL_DIR='unused'"]], ids=lambda a: a[0])
def test_core_only_install_says_which_extra(core_only, argv, tmp_path, capsys):
  """tasks / inspect import seqio; train's config includes gin/data/seqio.gin."""
  assert cli.main(argv) == 1
  err = capsys.readouterr().err
  assert err == f"ptuning-jax {argv[0]}: {NEEDS_DATA}\n"
  assert not (tmp_path / "unused").exists()


def test_help_lists_macros_configs_environment_and_an_example(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["infer", "--help"])
  assert exit_.value.code == 0
  out = capsys.readouterr().out
  macros = out[out.index("Required macros"):out.index("Shipped configs")]
  for name in ("CHECKPOINT_DIR", "DATA", "METHOD", "INPUT_FILE", "OUTPUT_FILE"):
    assert name in macros, name
  assert "MODEL_DIR" not in macros  # prompt_infer.gin defaults it to None
  for path in glob.glob(str(REPO / "configs" / "*.gin")):
    assert f"configs/{os.path.basename(path)}" in out
  # Every PTUNING_JAX_* variable the package's code names is described.
  names = set()
  for path in (REPO / "ptuning_jax").rglob("*.py"):
    names.update(re.findall(r"[\"'](PTUNING_JAX_[A-Z_]+)[\"']", path.read_text()))
  assert names and all(n in out for n in names), names
  assert "Example:\n  ptuning-jax infer --gin_file=gin/runs/prompt_infer.gin" in out


def test_train_help_names_model_dir(capsys):
  with pytest.raises(SystemExit):
    cli.main(["train", "--help"])
  out = capsys.readouterr().out
  assert "CHECKPOINT_DIR, DATA, METHOD, MODEL_DIR" in out


@pytest.mark.parametrize("command, expected", [
    ("inspect", ["a task or mixture name", "(default: validation)", "(default: 3)"]),
    ("demo", ["(default: 1500)", "(default: 300)", "(default: 16)"])])
def test_inspect_and_demo_help(command, expected, capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main([command, "--help"])
  assert exit_.value.code == 0
  out = capsys.readouterr().out
  assert all(e in out for e in expected), out


@pytest.mark.needs("tensorflow", "seqio")
def test_train_eval_infer(tmp_path, byte_backbone, capsys):
  model_dir = tmp_path / "run"
  assert cli.main(["train", *_flags(byte_backbone, model_dir)]) == 0
  for name in ("config.gin", "operative_config.gin", "metrics.jsonl", "hparams.json"):
    assert (model_dir / name).exists(), name
  assert "prompt_tuning.SoftPrompt.length = %PROMPT_LENGTH" in (
      model_dir / "operative_config.gin").read_text()
  assert sorted(os.listdir(model_dir / "checkpoints" / "numpy")) == ["2", "4"]
  train_out = capsys.readouterr().out
  train_metrics = json.loads(train_out[train_out.index("{"):])

  eval_file = tmp_path / "eval.json"
  # Run file first, then the experiment (which sets the task and method).
  assert cli.main(["eval", "--gin_file", "gin/runs/prompt_eval.gin",
                   "--gin_file", CONFIG, *_flags(byte_backbone, model_dir)[2:],
                   f"--gin.EVAL_OUTPUT_FILE='{eval_file}'"]) == 0
  metrics = json.loads(eval_file.read_text())
  assert metrics["step"] == 4
  assert metrics["accuracy"] == train_metrics["eval/accuracy"]

  inputs = tmp_path / "inputs.txt"
  inputs.write_text("freq: abcbb\nfreq: aacca\n")
  out = tmp_path / "preds.jsonl"
  assert cli.main(["infer", "--gin_file", "gin/runs/prompt_infer.gin", "--gin_file", CONFIG,
                   *_flags(byte_backbone, model_dir)[2:],
                   f"--gin.INPUT_FILE='{inputs}'", f"--gin.OUTPUT_FILE='{out}'"]) == 0
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r["inputs"] for r in rows] == ["freq: abcbb", "freq: aacca"]
  assert all(isinstance(r["prediction"], str) for r in rows)


@pytest.mark.needs("tensorflow", "seqio")
def test_wrong_binding_is_named(tmp_path, byte_backbone, capsys):
  code = cli.main(["train", *_flags(byte_backbone, tmp_path / "x"),
                   "--gin.train.train.num_stepz=3"])
  assert code == 1
  err = capsys.readouterr().err
  assert "num_stepz" in err and "bindings" in err


@pytest.mark.needs("tensorflow", "seqio")
def test_missing_checkpoint_dir_is_named(tmp_path, capsys):
  code = cli.main(["train", *_flags(str(tmp_path / "no_such_ckpt"), tmp_path / "x")])
  assert code == 1
  assert "no_such_ckpt" in capsys.readouterr().err


def _bert_flags(glue_world, model_dir, *extra):
  return ["--gin_file", "gin/runs/prompt_finetune.gin", "--gin_file", "gin/data/glue.gin",
          "--gin_file", "gin/methods/prompt_tuning.gin",
          f"--gin.CHECKPOINT_DIR='{glue_world['backbone']}'",
          f"--gin.DATA_DIR='{glue_world['data']}'", "--gin.GLUE_TASK='rte'",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.MAX_LENGTH=24", "--gin.BATCH_SIZE=8",
          "--gin.EVAL_BATCH_SIZE=8", "--gin.TRAIN_STEPS=4", "--gin.EVAL_EVERY=4",
          "--gin.CHECKPOINT_EVERY=2", "--gin.PROMPT_LENGTH=3",
          "--gin.initializers.sampled_vocab.population_size=20", *extra]


def test_bert_classification_train_eval_infer(tmp_path, glue_world, capsys):
  """The BERT family runs through the same commands, run files and gin as T5
  (gin/data/glue.gin instead of seqio.gin); no TensorFlow is needed."""
  model_dir = tmp_path / "run"
  assert cli.main(["train", *_bert_flags(glue_world, model_dir)]) == 0
  out = capsys.readouterr().out
  train_metrics = json.loads(out[out.index("{"):])
  assert set(train_metrics) >= {"eval/accuracy", "eval/score", "trainable_params"}
  assert sorted(os.listdir(model_dir / "checkpoints" / "numpy")) == ["2", "4"]
  eval_file = tmp_path / "eval.json"
  flags = _bert_flags(glue_world, model_dir)
  flags[1] = "gin/runs/prompt_eval.gin"
  assert cli.main(["eval", *flags, f"--gin.EVAL_OUTPUT_FILE='{eval_file}'"]) == 0
  metrics = json.loads(eval_file.read_text())
  assert metrics["step"] == 4 and metrics["score"] == train_metrics["eval/score"]
  out_file = tmp_path / "preds.jsonl"
  flags[1] = "gin/runs/prompt_infer.gin"
  inputs = os.path.join(glue_world["data"], "super_glue", "rte", "val.jsonl")
  capsys.readouterr()
  assert cli.main(["infer", *flags, f"--gin.INPUT_FILE='{inputs}'",
                   f"--gin.OUTPUT_FILE='{out_file}'"]) == 0
  out = capsys.readouterr().out  # where the predictions went, and how many
  assert json.loads(out[out.index("{"):]) == {"output_file": str(out_file), "predictions": 6}
  rows = [json.loads(l) for l in out_file.read_text().splitlines()]
  assert len(rows) == 6
  assert {r["prediction"] for r in rows} <= {"entailment", "not_entailment"}


@pytest.mark.parametrize("bad", ["--gin.CHECKPOINT_DIR='no_such_ckpt'", "--gin.BATCH_SIZE=7"])
def test_failed_run_writes_no_config(tmp_path, glue_world, bad, capsys):
  """A run failing on its inputs (a missing checkpoint; a batch that does not
  split over the 8 devices) creates no MODEL_DIR, and leaves an existing
  one's config.gin as it was."""
  fresh, existing = tmp_path / "fresh", tmp_path / "existing"
  existing.mkdir()
  (existing / "config.gin").write_text("# the earlier run's\n")
  for model_dir in (fresh, existing):
    assert cli.main(["train", *_bert_flags(glue_world, model_dir), bad]) == 1
  assert bad.split("=")[1].strip("'") in capsys.readouterr().err
  assert not fresh.exists()
  assert os.listdir(existing) == ["config.gin"]
  assert (existing / "config.gin").read_text() == "# the earlier run's\n"
