"""The `ptuning-jax` command line end to end on tiny local checkpoints."""
import json
import os

import pytest

from ptuning_jax import cli

CONFIG = "configs/synthetic_freq_prompt.gin"


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
  assert cli.main(["infer", *flags, f"--gin.INPUT_FILE='{inputs}'",
                   f"--gin.OUTPUT_FILE='{out_file}'"]) == 0
  rows = [json.loads(l) for l in out_file.read_text().splitlines()]
  assert len(rows) == 6
  assert {r["prediction"] for r in rows} <= {"entailment", "not_entailment"}
