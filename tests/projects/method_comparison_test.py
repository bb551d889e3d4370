"""experiments: the grid runner on a tiny random BERT and tiny task files:
every method runs through it, rows / table / plot are written, a rerun
resumes, and nothing frozen changes.

Dimension letters: H hidden size.
"""
import json

import gin
import jax
import numpy as np
import pytest

from ptuning_jax.backbones import bert
from ptuning_jax.projects import method_comparison
from ptuning_jax import gin_utils
from ptuning_jax.data import glue
from ptuning_jax.data import pipeline

tokenizers = pytest.importorskip("tokenizers")

WORDS = ("the a man woman dog cat runs sat ran is was not happy sad rain it "
         "because so water flowed he she said good bad movie").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = bert.BertConfig(vocab_size=len(SPECIALS) + len(WORDS) + 1, hidden_size=16,
                       num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=64)
LEARNING_RATES = {m: 1e-2 for m in method_comparison.METHODS}


def _write_tokenizer(directory):
  """A WordPiece tokenizer.json with BERT's template over WORDS."""
  from tokenizers import models, normalizers, pre_tokenizers, processors
  vocab = {token: i for i, token in enumerate(SPECIALS + WORDS + ["."])}
  tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
  directory.mkdir(parents=True, exist_ok=True)
  tok.save(str(directory / "tokenizer.json"))
  return directory


def _sentence(rng, n):
  return " ".join(rng.choice(WORDS, n)) + " ."


def _write_data(root, n_train=12, n_eval=6):
  rng = np.random.default_rng(0)

  def jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

  for split, n in (("train", n_train), ("val", n_eval)):
    jsonl(root / f"super_glue/rte/{split}.jsonl", [
        {"premise": _sentence(rng, 6), "hypothesis": _sentence(rng, 3), "idx": i,
         "label": ["entailment", "not_entailment"][i % 2]} for i in range(n)])
    jsonl(root / f"super_glue/copa/{split}.jsonl", [
        {"premise": _sentence(rng, 4), "choice1": _sentence(rng, 3),
         "choice2": _sentence(rng, 3), "question": ["cause", "effect"][i % 2],
         "label": i % 2, "idx": i} for i in range(n)])
  header = "\t".join(["index", "genre", "filename", "year", "old_index", "source1",
                       "source2", "sentence1", "sentence2", "score"]) + "\n"
  for split, n in (("train", n_train), ("dev", n_eval)):
    path = root / f"glue/stsb/{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "".join(
        f"{i}\tg\tf\ty\to\ts\ts\t{_sentence(rng, 4)}\t{_sentence(rng, 4)}\t{i % 5 + 0.5}\n"
        for i in range(n)))
  return root


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("grid")
  return {"data": _write_data(root / "data"), "tok": _write_tokenizer(root / "tok"),
          "root": root}


def _config(dirs, name, **overrides):
  kwargs = dict(
      tasks=("rte", "copa", "stsb"), methods=method_comparison.METHODS, seeds=(0,),
      train_steps=2, batch_size=4, default_max_length=24, eval_batch_size=4,
      data_dir=str(dirs["data"]), results_jsonl=str(dirs["root"] / f"{name}.jsonl"),
      table_path=str(dirs["root"] / f"{name}.md"),
      plot_path=str(dirs["root"] / f"{name}.png"), random_backbone=TINY,
      tokenizer_dir=str(dirs["tok"]), backbone_name="tiny-random",
      learning_rates=LEARNING_RATES, head_learning_rates={"full_finetune": 1e-3},
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
  assert stsb["p_tuning_v2"]["method_params"] == 2 * 2 * 8 * h
  assert by_key[("p_tuning_v2", "copa")]["method_params"] == 2 * 2 * 3 * h
  table = (dirs["root"] / "all.md").read_text()
  assert table.count("\n") == 2 + len(method_comparison.METHODS) + 1  # + majority class
  assert "| *majority class* | 0 |" in table
  for method in method_comparison.METHODS:
    assert f"| {method} |" in table
  png = (dirs["root"] / "all.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_majority_scores_predict_the_most_common_training_label():
  def data(task, train, evals):
    arrays = lambda labels: pipeline.ArrayDataset({"label": np.asarray(labels)})
    return glue.TaskData(glue.TASKS[task], arrays(train), arrays(evals),
                              max_length=8, eval_total=len(evals))
  scores = method_comparison.majority_scores({
      "rte": data("rte", [1, 0, 1], [1, 0, 0, 0]),
      "copa": data("copa", [1, 1, 0], [1, 0]),
      "cb": data("cb", [2, 2, 1], [2, 0, 2, 1]),
      "stsb": data("stsb", [0.5, 4.0], [1.0, 2.0])})
  assert scores["rte"] == 0.25 and scores["copa"] == 0.5 and scores["stsb"] == 0.0
  # CB: (accuracy + macro-F1) / 2 with "always class 2": 0.5 and (0 + 0 + 2/3) / 3.
  np.testing.assert_allclose(scores["cb"], (0.5 + (2 / 3) / 3) / 2)


@pytest.mark.needs("matplotlib")
def test_rerun_resumes_and_table_has_seed_std(dirs, monkeypatch):
  config = _config(dirs, "resume", tasks=("rte",), methods=("head_only", "ia3"),
                   seeds=(0, 1))
  rows = method_comparison.run(config)
  assert sorted((r["method"], r["seed"]) for r in rows) == [
      ("head_only", 0), ("head_only", 1), ("ia3", 0), ("ia3", 1)]
  scores = [r["score"] for r in rows if r["method"] == "ia3"]
  mean, std = np.mean(scores), np.std(scores, ddof=1)
  assert f"{100 * mean:.1f} ± {100 * std:.1f}" in (dirs["root"] / "resume.md").read_text()

  def fail(*args, **kwargs):
    raise AssertionError("a finished cell was run again")
  monkeypatch.setattr(method_comparison, "run_one", fail)
  assert method_comparison.run(config) == rows
  stale = _config(dirs, "resume", tasks=("rte",), methods=("head_only",),
                  seeds=(0, 1), train_steps=3)
  with pytest.raises(ValueError, match=r"row \('head_only', 'rte', 0\) was run with "
                                       r"other settings.*train_steps"):
    method_comparison.run(stale)


def test_full_finetune_run_leaves_the_backbone_unchanged(dirs):
  """The donated train state holds a copy of the encoder (prompt methods:
  see classifiers_test)."""
  method = "full_finetune"
  config = _config(dirs, "frozen", tasks=("rte",), methods=(method,))
  backbone = method_comparison.load_backbone(config)
  snapshot = jax.device_get(backbone.params)
  data = glue.load_task("rte", config.data_dir, backbone.tokenizer, 24)
  setup = method_comparison.make_setup(method, config, backbone, data.spec, 24)
  row = method_comparison.run_one(setup, data, config, backbone, method, seed=0)
  assert row["final_train_loss"] != row["first_train_loss"]
  for a, b in zip(jax.tree_util.tree_leaves(backbone.params),
                  jax.tree_util.tree_leaves(snapshot)):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert setup.frozen == {}


def test_setups_are_shared_by_tasks_of_the_same_shape():
  config = method_comparison.ExperimentConfig(
      learning_rates=LEARNING_RATES, max_lengths={"rte": 64, "mrpc": 64, "boolq": 64},
      prefix_lengths={"boolq": 40})
  spec = glue.get_task
  key = lambda m, t: method_comparison.setup_key(m, config, spec(t), config.max_length(t))
  assert key("ia3", "rte") == key("ia3", "mrpc")
  assert key("p_tuning_v2", "rte") != key("p_tuning_v2", "boolq")
  assert key("ia3", "rte") != key("ia3", "cb")  # three classes
  assert key("ia3", "rte") != key("dept", "rte")


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
