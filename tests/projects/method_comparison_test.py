"""experiments: the grid runner on a tiny random BERT and tiny task files:
every method runs through it, rows / table / plot are written, a rerun
resumes, and nothing frozen changes.

Dimension letters: H hidden size.
"""
import pathlib

import gin
import jax
import numpy as np
import pytest

from ptuning_jax.backbones import bert
from ptuning_jax.projects import method_comparison
from ptuning_jax import gin_utils
from ptuning_jax.data import glue
from ptuning_jax import testing
from ptuning_jax.data import pipeline
from ptuning_jax import backbones
from ptuning_jax import methods
from ptuning_jax.backbones.hf import bert as hf_bert
from ptuning_jax.methods import prefix_tuning
from ptuning_jax.training import evaluation
from ptuning_jax.training import partitioning

tokenizers = pytest.importorskip("tokenizers")

TINY = testing.tiny_bert_config()
LEARNING_RATES = {m: 1e-2 for m in method_comparison.METHODS}


@pytest.fixture(scope="module")
def dirs(glue_world, tmp_path_factory):
  return {"data": glue_world["data"], "tok": glue_world["backbone"],
          "root": tmp_path_factory.mktemp("grid")}


def _config(dirs, name, **overrides):
  kwargs = dict(
      tasks=("rte", "copa", "stsb"), methods=method_comparison.METHODS, seeds=(0,),
      train_steps=2, batch_size=4, default_max_length=24, eval_batch_size=4,
      data_dir=dirs["data"], results_jsonl=str(dirs["root"] / f"{name}.jsonl"),
      table_path=str(dirs["root"] / f"{name}.md"),
      plot_path=str(dirs["root"] / f"{name}.png"), random_backbone=TINY,
      tokenizer_dir=dirs["tok"], backbone_name="tiny-random",
      learning_rates=LEARNING_RATES, head_learning_rates={"full_finetune": 1e-3},
      mesh_data=1,
      prompt_length=8, low_rank_rank=2, prefix_lengths={"copa": 3})
  kwargs.update(overrides)
  return method_comparison.ExperimentConfig(**kwargs)


@pytest.mark.slow
@pytest.mark.needs("matplotlib")
def test_every_method_runs_through_the_grid(dirs):
  """All seven methods on a multiple-choice and a regression task (the
  classification path runs in the other tests)."""
  config = _config(dirs, "all", tasks=("copa", "stsb"))
  rows = method_comparison.run(config)
  assert len(rows) == 2 * len(method_comparison.METHODS)
  by_key = {(r["method"], r["task"]): r for r in rows}
  for method in method_comparison.METHODS:
    for task, metrics in (("copa", {"accuracy"}), ("stsb", {"pearson", "spearman"})):
      row = by_key[(method, task)]
      assert set(row["metrics"]) == metrics | {"score"}
      assert row["train_steps"] == 2 and row["eval_examples"] == 6
      assert np.isfinite(row["first_train_loss"]) and np.isfinite(row["score"])
  h = TINY.hidden_size
  stsb = {m: by_key[(m, "stsb")] for m in method_comparison.METHODS}
  assert stsb["head_only"]["trainable_params"] == h + 1
  assert stsb["full_finetune"]["method_params"] == bert.num_params(TINY)
  assert stsb["prompt_tuning"]["method_params"] == 8 * h
  assert stsb["dept"]["method_params"] <= 8 * h  # DePT at the prompt's budget
  assert stsb["low_rank"]["method_params"] == 2 * (8 + h)
  assert stsb["ia3"]["method_params"] == 2 * (2 * h + 32)
  assert stsb["prefix_tuning"]["method_params"] == 2 * 2 * 8 * h
  assert by_key[("prefix_tuning", "copa")]["method_params"] == 2 * 2 * 3 * h
  table = (dirs["root"] / "all.md").read_text()
  assert table.count("\n") == 2 + len(method_comparison.METHODS) + 1  # + majority class
  assert "| *majority class* | 0 |" in table
  for method in method_comparison.METHODS:
    assert f"| {method} |" in table
  png = (dirs["root"] / "all.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


class _Labels:
  """A data object stub: a task's training labels and evaluation split."""

  def __init__(self, task, train, evals):
    self.spec = glue.TASKS[task]
    self.train = pipeline.ArrayDataset({"label": np.asarray(train)})
    self._labels = np.asarray(evals)

  def eval_data(self, split, max_examples):
    del split, max_examples
    return evaluation.EvalData(
        pipeline.ArrayDataset({"label": self._labels}),
        compute_output_metrics=lambda o: glue.compute_metrics(self.spec, o, self._labels))


def test_majority_scores_predict_the_most_common_training_label():
  scores = method_comparison.majority_scores({
      "rte": _Labels("rte", [1, 0, 1], [1, 0, 0, 0]),
      "copa": _Labels("copa", [1, 1, 0], [1, 0]),
      "cb": _Labels("cb", [2, 2, 1], [2, 0, 2, 1]),
      "stsb": _Labels("stsb", [0.5, 4.0], [1.0, 2.0])})
  assert scores["rte"] == 25.0 and scores["copa"] == 50.0 and scores["stsb"] == 0.0
  # CB: (accuracy + macro-F1) / 2 with "always class 2": 50 and 100 (0 + 0 + 2/3) / 3.
  np.testing.assert_allclose(scores["cb"], (50 + 100 * (2 / 3) / 3) / 2)


@pytest.mark.needs("matplotlib")
def test_rerun_resumes_and_table_has_seed_std(dirs, monkeypatch):
  config = _config(dirs, "resume", tasks=("rte",), methods=("head_only", "ia3"),
                   seeds=(0, 1))
  rows = method_comparison.run(config)
  assert sorted((r["method"], r["seed"]) for r in rows) == [
      ("head_only", 0), ("head_only", 1), ("ia3", 0), ("ia3", 1)]
  scores = [r["score"] for r in rows if r["method"] == "ia3"]
  mean, std = np.mean(scores), np.std(scores, ddof=1)
  assert f"{mean:.1f} ± {std:.1f}" in (dirs["root"] / "resume.md").read_text()

  def fail(*args, **kwargs):
    raise AssertionError("a finished cell was run again")
  monkeypatch.setattr(method_comparison, "run_one", fail)
  assert method_comparison.run(config) == rows
  stale = _config(dirs, "resume", tasks=("rte",), methods=("head_only",),
                  seeds=(0, 1), train_steps=3)
  with pytest.raises(ValueError, match=r"row \('head_only', 'rte', 0\) was run with "
                                       r"other settings.*train_steps"):
    method_comparison.run(stale)


def test_cells_are_ordinary_runs(dirs):
  """A cell is a `run.train` run directory: its config, metrics and (full
  fine-tuning) the exported fine-tuned backbone, which loads and differs from
  the random one it started from; its checkpoints are gone after the row."""
  method = "full_finetune"
  config = _config(dirs, "cells", tasks=("rte",), methods=(method,))
  (row,) = method_comparison.run(config)
  run_dir = pathlib.Path(row["run_dir"])
  assert (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
  assert row["final_train_loss"] != row["first_train_loss"]
  tuned_config, tuned = hf_bert.load_checkpoint(run_dir / "backbone")
  start = backbones.load(config.backbone_spec(), partitioning.make_mesh(1, 1),
                         partitioning.standard_logical_axis_rules()).params
  assert tuned_config.hidden_size == TINY.hidden_size
  changed = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
      jax.tree_util.tree_leaves(tuned), jax.tree_util.tree_leaves(start))]
  assert sum(changed) > len(changed) // 2


def test_method_settings_follow_the_task():
  """DePT gets (m, r) at the prompt's budget for the task's length; P-Tuning
  v2 (prefix tuning) its per-task prefix length; registered methods only."""
  config = method_comparison.ExperimentConfig(
      learning_rates=LEARNING_RATES, max_lengths={"rte": 64, "wic": 32},
      prefix_lengths={"boolq": 40}, prompt_length=20)
  dept_rte = method_comparison.method_factory("dept", config, "rte", 384, 30522)
  dept_wic = method_comparison.method_factory("dept", config, "wic", 384, 30522)
  assert (dept_rte.keywords["length"], dept_rte.keywords["rank"]) == (13, 6)
  assert (dept_wic.keywords["length"], dept_wic.keywords["rank"]) == (7, 12)
  prefix = method_comparison.method_factory("prefix_tuning", config, "boolq", 384, 30522)
  assert prefix.keywords["length"] == 40 and prefix.func is prefix_tuning.PrefixTuning
  assert set(method_comparison.METHODS) <= set(methods.REGISTRY)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"methods=.*unknown \['lora'\]"):
    method_comparison.ExperimentConfig(methods=("lora",), learning_rates={"lora": 1.0})
  with pytest.raises(ValueError, match=r"learning_rates has no entry for methods \['ia3'\]"):
    method_comparison.ExperimentConfig(methods=("ia3",), learning_rates={})
  with pytest.raises(ValueError, match="random_backbone needs tokenizer_dir"):
    method_comparison.ExperimentConfig(learning_rates=LEARNING_RATES, random_backbone=TINY)
  with pytest.raises(ValueError, match="train_steps has no entry for 'cb'"):
    method_comparison.ExperimentConfig(learning_rates=LEARNING_RATES, tasks=("rte", "cb"),
                                 train_steps={"rte": 3})


def test_shipped_config_builds_the_full_grid():
  try:
    gin_utils.parse(["configs/minilm_method_comparison.gin"], [])
    config = gin.get_configurable(method_comparison.ExperimentConfig)()
  finally:
    gin.clear_config()
  assert set(config.tasks) == set(glue.TASKS)
  assert tuple(config.methods) == method_comparison.METHODS
  assert len(config.seeds) == 3
  assert len({config.steps(t) for t in config.tasks}) == 1
  assert config.results_jsonl == "notebooks/minilm_method_comparison.jsonl"
  assert config.plot_path == "notebooks/minilm_method_comparison.png"
