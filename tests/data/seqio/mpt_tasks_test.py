"""Preprocessing tests of every MPT/DePT task on raw examples."""
import os

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from ptuning_jax.data.seqio import labels as labels_registry
from ptuning_jax.data.seqio import inspection
from ptuning_jax.data.seqio import lester_tasks  # noqa: F401  (registers tasks)
from ptuning_jax.data import metrics
from ptuning_jax.data.seqio import mpt_tasks
from ptuning_jax.data.seqio import postprocessors as post
from ptuning_jax.data.seqio import sources
from ptuning_jax.data.seqio import vocabularies

run_text = inspection.preprocess_text


def _io(task_name, raw):
  (ex,) = run_text(task_name, raw)
  return ex["inputs"], ex["targets"]


@pytest.mark.parametrize("task,raw,inputs,targets", [
    ("mpt_mnli", {"premise": "A man eats.", "hypothesis": "He eats.",
                  "label": 2}, "premise: A man eats. hypothesis: He eats.",
     "2"),
    ("mpt_qqp", {"question1": "Why?", "question2": "How?", "label": 1},
     "question1: Why? question2: How?", "1"),
    ("mpt_qnli", {"question": "Who?", "sentence": "Bob did.", "label": 0},
     "question: Who? sentence: Bob did.", "0"),
    ("mpt_sst2", {"sentence": "it 's good . ", "label": 1},
     "sentence: it 's good . ", "1"),
    ("mpt_mrpc", {"sentence1": "A b.", "sentence2": "B a.", "label": 1},
     "sentence1: A b. sentence2: B a.", "1"),
    ("mpt_rte", {"sentence1": "It rains.", "sentence2": "It is wet.",
                 "label": 0}, "sentence1: It rains. sentence2: It is wet.",
     "0"),
    ("mpt_cola", {"sentence": "Him went.", "label": 0}, "sentence: Him went.",
     "0"),
    ("mpt_boolq", {"question": "is it?", "passage": "It is.", "label": 1},
     "question: is it? passage: It is.", "1"),
    ("mpt_wic", {"sentence1": "A bank.", "sentence2": "River bank.",
                 "word": "bank", "label": 0},
     "sentence1: A bank. sentence2: River bank. word: bank", "0"),
    ("mpt_cb", {"premise": "P.", "hypothesis": "H.", "label": 2},
     "premise: P. hypothesis: H.", "2"),
    ("mpt_yelp", {"text": "Great food!", "label": 1},
     "sentence: Great food!", "1"),
    ("mpt_scitail", {"premise": "Water boils.", "hypothesis": "It boils.",
                     "label": 1}, "premise: Water boils. hypothesis: It boils.",
     "1"),
    ("mpt_paws", {"sentence1": "a b", "sentence2": "b a", "label": 0},
     "sentence1: a b sentence2: b a", "0"),
    ("mpt_winogrande", {"sentence": "Ann beat _ .", "option1": "Bo",
                        "option2": "Cy", "label": 1},
     "sentence: Ann beat _ . option0: Bo option1: Cy", "1"),
    ("mpt_winogrande_compat", {"sentence": "Ann beat _ .", "option1": "Bo",
                               "option2": "Cy", "label": 1},
     "sentence: Ann beat _ . option0: Bo option1: Bo", "1"),
    ("mpt_stsb", {"sentence1": "a", "sentence2": "b", "label": 3.52},
     "sentence1: a sentence2: b", "3.6"),
    ("mpt_stsb_compat", {"sentence1": "a", "sentence2": "b", "label": 3.52},
     "sentence1: a sentence2: b", "3.5"),
])
def test_classification_formats(task, raw, inputs, targets):
  assert _io(task, raw) == (inputs, targets)


def test_stsb_grid_ends():
  assert _io("mpt_stsb", {"label": 0.09})[1] == "0.0"
  assert _io("mpt_stsb", {"label": 4.95})[1] == "5.0"
  assert _io("mpt_stsb", {"label": 1.1})[1] == "1.2"


def test_multirc_markup_and_group():
  (ex,) = run_text("mpt_multirc", {
      "question": "What <b>is</b> it?", "answer": "A<br>B",
      "paragraph": "<b>P</b>.", "label": 1,
      "idx": {"paragraph": 4, "question": 9, "answer": 30}})
  assert ex["inputs"] == "question: What is it? answer: A B paragraph: P."
  assert ex["targets"] == "1"
  assert (ex["idx/paragraph"], ex["idx/question"], ex["idx/answer"]) == (
      4, 9, 30)


def test_wsc_marks_spans():
  text = ("The city councilmen refused the demonstrators a permit because "
          "they feared violence .")
  inputs, targets = _io("mpt_wsc", {
      "text": text, "span1_text": "The city councilmen", "span1_index": 0,
      "span2_text": "they", "span2_index": 9, "label": 1})
  assert inputs == ("text: * The city councilmen * refused the demonstrators "
                    "a permit because # they # feared violence .")
  assert targets == "1"
  # Pronoun before the noun: no index shift.
  inputs, _ = _io("mpt_wsc", {"text": "He said Bob left .", "span1_text": "Bob",
                              "span1_index": 2, "span2_text": "He",
                              "span2_index": 0, "label": 0})
  assert inputs == "text: # He # said * Bob * left ."


@pytest.mark.parametrize("task", ["mpt_nq", "mpt_hotpotqa", "mpt_searchqa",
                                  "mpt_newsqa"])
def test_mrqa_format_pads_punctuation(task):
  (ex,) = run_text(task, {"question": "Who wrote 'Hamlet'?",
                          "context": "Hamlet (1600) is a play.",
                          "answers": ["Shakespeare", "W. Shakespeare"]})
  # DePT joins padded fields with one space, keeping their trailing spaces.
  assert ex["inputs"] == ("question: Who wrote ' Hamlet ' ?  context: Hamlet "
                          "( 1600 ) is a play . ")
  assert ex["targets"] == "Shakespeare"
  assert ex["answers"] == ["Shakespeare", "W . Shakespeare"]


def test_pad_punctuation_keeps_letters_and_unicode_space():
  (ex,) = run_text("mpt_nq", {"question": "François\u00a0Bayrou—who?",
                              "context": "x_y 3.5", "answers": ["a"]})
  assert ex["inputs"] == ("question: François Bayrou — who ?  context: "
                          "x_y 3 . 5")


def test_squad_format():
  (ex,) = run_text("mpt_squad", {
      "question": "Where?", "context": "In Paris.",
      "answers": {"text": ["Paris", "in Paris"], "answer_start": [3, 0]}})
  assert ex["inputs"] == "question: Where ?  context: In Paris . "
  assert (ex["targets"], ex["answers"]) == ("Paris", ["Paris", "in Paris"])


def test_record_one_example_per_answer():
  raw = {"passage": "The cat sat.\n@highlight\nCats rule\n@highlight\nDogs",
         "query": "@placeholder sat on the mat", "entities": ["cat", "mat"],
         "answers": ["cat", "Cat"], "idx": {"passage": 1, "query": 7}}
  exs = run_text("mpt_record", raw, {**raw, "answers": []})
  inputs = ("record query: @placeholder sat on the mat entities: cat, mat "
            "passage: The cat sat. Cats rule. Dogs")
  assert [e["inputs"] for e in exs] == [inputs] * 3
  assert [e["targets"] for e in exs] == ["cat", "Cat", "<unk>"]
  assert exs[0]["answers"] == ["cat", "Cat"] and exs[2]["answers"] == []
  assert (exs[1]["idx/passage"], exs[1]["idx/query"]) == (1, 7)


def test_all_23_datasets_registered_with_metrics():
  assert len(mpt_tasks.DATASETS) == 23 and len(mpt_tasks.TARGETS) == 21
  for d in mpt_tasks.DATASETS:
    task = seqio.get_mixture_or_task(f"mpt_{d}")
    assert task.splits == ("train", "validation", "test")
    assert task.metric_fns
    assert task.output_features["inputs"].add_eos
    assert task.output_features["targets"].add_eos


def test_label_strings():
  assert post.label_strings("mpt_cb") == ["0", "1", "2"]
  assert labels_registry.get("mpt_cb") == ("0", "1", "2")
  assert labels_registry.get("mpt_nq") is None
  assert post.label_strings("mpt_stsb")[:3] == ["0.0", "0.2", "0.4"]
  assert len(post.label_strings("mpt_stsb")) == 26
  assert len(post.label_strings("mpt_stsb_compat")) == 51
  with pytest.raises(KeyError):
    post.label_strings("mpt_nq")


def test_grammar_and_on_demand_registration():
  assert mpt_tasks.parse_name("mpt_rte_k16_s3_compat") == {
      "dataset": "rte", "k": 16, "seed": 3, "compat": True}
  assert mpt_tasks.parse_name("mpt_cb_k4") == {
      "dataset": "cb", "k": 4, "seed": 42, "compat": False}
  assert mpt_tasks.parse_name("mpt_unknown") is None
  assert mpt_tasks.ensure_registered("mpt_rte_k8_s5")
  task = seqio.get_mixture_or_task("mpt_rte_k8_s5")
  assert task.source.few_shot == mpt_tasks.splits.FewShot(8, 5)
  assert post.label_strings("mpt_rte_k8_s5") == ["0", "1"]
  assert not mpt_tasks.ensure_registered("glue_rte_v200_typo")
  with pytest.raises(ValueError, match="generative"):
    mpt_tasks.ensure_registered("mpt_nq_k4")
  with pytest.raises(ValueError, match="no compat variant"):
    mpt_tasks.ensure_registered("mpt_rte_compat")
  assert mpt_tasks.reference_sizes("mpt_cb_k16")["train"] == 48
  assert mpt_tasks.reference_sizes("mpt_cb_k16_compat")["train"] == 16


def test_postprocess_and_metrics_wiring():
  task = seqio.get_mixture_or_task("mpt_multirc")
  ex = {"idx/question": 3}
  targets = [task.postprocess_fn(t, example=ex, is_target=True)
             for t in ("1", "0")]
  preds = [task.postprocess_fn(p, example=ex) for p in ("1", "maybe")]
  results = {}
  for fn in task.metric_fns:
    results.update(fn(targets, preds))
  # The invalid "maybe" on a 0 target counts as a false positive.
  assert results == pytest.approx({"f1": 200 / 3, "exact_match": 0.0})
  qa = seqio.get_mixture_or_task("mpt_nq")
  gold = [qa.postprocess_fn("x", example={"answers": [b"W . Shakespeare"]},
                            is_target=True)]
  assert qa.metric_fns[0](gold, ["w. shakespeare"]) == {"em": 100.0,
                                                       "f1": 100.0}
  assert seqio.get_mixture_or_task("mpt_cb").metric_fns[0].__name__ == (
      "mean_3class_f1")
  assert metrics.accuracy in seqio.get_mixture_or_task("mpt_rte").metric_fns


@pytest.fixture
def spm_env(t5_vocab_path):
  old = os.environ.get("PTUNING_JAX_SPM_PATH")
  os.environ["PTUNING_JAX_SPM_PATH"] = str(t5_vocab_path)
  yield t5_vocab_path
  if old is None:
    os.environ.pop("PTUNING_JAX_SPM_PATH")
  else:
    os.environ["PTUNING_JAX_SPM_PATH"] = old


def test_full_pipeline_with_seqio_test_utils(spm_env):
  raw = {"sentence1": "It rains.", "sentence2": "It is wet.", "label": 0,
         "idx": 5}
  ex = seqio.test_utils.test_preprocessing_single(
      "mpt_rte", {"validation": raw})
  assert ex["inputs_pretokenized"] == (
      b"sentence1: It rains. sentence2: It is wet.")
  vocab = seqio.get_mixture_or_task("mpt_rte").output_features[
      "inputs"].vocabulary
  assert vocab.sentencepiece_model_file == str(spm_env)
  default = vocabularies.default_vocabulary()
  assert vocab == default and default == vocab
  assert ex["inputs"][-1] == 1  # EOS
  assert vocab.decode(ex["inputs"][:-1].tolist()) == (
      "sentence1: It rains. sentence2: It is wet.")
  assert vocab.decode(ex["targets"][:-1].tolist()) == "0"


def test_local_source_end_to_end_on_shared_data(shared_data, spm_env):
  sources.configure("local", str(shared_data))
  sources.clear_caches()
  try:
    task = seqio.get_mixture_or_task("mpt_rte")
    sizes = {s: task.num_input_examples(s) for s in task.splits}
    assert sizes == mpt_tasks.reference_sizes("mpt_rte")
    val = list(task.get_dataset({"inputs": 256, "targets": 4},
                                split="validation", shuffle=False)
               .as_numpy_iterator())
    assert len(val) == 138 and all(len(e["inputs"]) <= 256 for e in val)
    assert {e["targets_pretokenized"] for e in val} == {b"0", b"1"}
    with pytest.raises(FileNotFoundError, match="mpt_boolq"):
      seqio.get_mixture_or_task("mpt_boolq").get_dataset(None, split="train")
  finally:
    sources.reset()


def test_tfds_mock_source_end_to_end(spm_env):
  sources.configure("tfds")
  sources.clear_caches()
  try:
    with tfds.testing.mock_data(num_examples=10):
      task = seqio.get_mixture_or_task("mpt_cb")
      got = {s: list(task.get_dataset(None, split=s, shuffle=False)
                     .as_numpy_iterator()) for s in ("validation", "test")}
      lester = seqio.get_mixture_or_task("taskless_glue_rte_v200")
      rte = list(lester.get_dataset(None, split="validation", shuffle=False)
                 .as_numpy_iterator())
  finally:
    sources.reset()
    sources.clear_caches()
  assert [len(got["validation"]), len(got["test"])] == [5, 5]
  for ex in got["validation"] + got["test"]:
    assert ex["inputs_pretokenized"].startswith(b"premise: ")
    assert ex["targets_pretokenized"] in (b"0", b"1", b"2")
  assert len(rte) == 10
  assert all(e["inputs_pretokenized"].startswith(b"sentence1: ") for e in rte)
  assert {e["targets_pretokenized"] for e in rte} <= {b"entailment",
                                                      b"not_entailment"}


def test_stsb_targets_match_dept_and_t5_formulas_on_real_labels(shared_data):
  raw = sources.raw_dataset("glue/stsb")
  path, reader = sources.local_file(raw, "validation", str(shared_data))
  labels = [ex["label"] for ex in reader(path)]
  exs = [{"label": x} for x in labels]
  compat = [e["targets"] for e in run_text("mpt_stsb_compat", *exs)]
  default = [e["targets"] for e in run_text("mpt_stsb", *exs)]
  # DePT: str(np.round((label * 5) / 5, decimals=1)) on the float32 label.
  dept = [str(np.round((float(np.float32(x)) * 5) / 5, decimals=1))
          for x in labels]
  # T5: tf.round(label * 5) / 5 in float32, one decimal.
  t5 = [f"{float(np.round(np.float32(x) * np.float32(5)) / np.float32(5)):.1f}"
        for x in labels]
  assert compat == dept
  assert default == t5
  assert set(default) <= set(mpt_tasks.STSB_GRID)
  assert set(compat) <= set(mpt_tasks.STSB_COMPAT_GRID)
  assert compat != default


def test_stsb_few_shot_binarizes_scores(shared_data):
  assert mpt_tasks.ensure_registered("mpt_stsb_k4_s1")
  sources.configure("local", str(shared_data))
  try:
    src = seqio.get_mixture_or_task("mpt_stsb_k4_s1").source
    scores = [float(e["label"])
              for e in tfds.as_numpy(src.get_dataset("train"))]
  finally:
    sources.reset()
  assert len(scores) == 8
  assert sum(round(s * 5) / 5 > 2.5 for s in scores) == 4
