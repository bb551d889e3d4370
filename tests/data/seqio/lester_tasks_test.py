"""Preprocessing tests of every Lester/T5-style task (and taskless twin)."""
import pytest
import seqio
import tensorflow as tf

from ptuning_jax.data.seqio import inspection
from ptuning_jax.data.seqio import lester_tasks
from ptuning_jax.data.seqio import postprocessors as post
from ptuning_jax.data.seqio import sources

run_text = inspection.preprocess_text


def _both(name, raw):
  """(inputs, targets) of the task and of its taskless twin."""
  (ex,) = run_text(name, raw)
  (tl,) = run_text(lester_tasks.TASKLESS + name, raw)
  assert tl["targets"] == ex["targets"]
  return ex["inputs"], tl["inputs"], ex["targets"]


@pytest.mark.parametrize("name,raw,inputs,targets", [
    ("glue_cola_v200", {"sentence": "Him went.", "label": 0},
     "cola sentence: Him went.", "unacceptable"),
    ("glue_sst2_v200", {"sentence": "fun .", "label": 1},
     "sst2 sentence: fun .", "positive"),
    ("glue_mrpc_v200", {"sentence1": "A.", "sentence2": "B.", "label": 1},
     "mrpc sentence1: A. sentence2: B.", "equivalent"),
    ("glue_qqp_v200", {"question1": "Q1?", "question2": "Q2?", "label": 0},
     "qqp question1: Q1? question2: Q2?", "not_duplicate"),
    ("glue_stsb_v200", {"sentence1": "a", "sentence2": "b", "label": 3.52},
     "stsb sentence1: a sentence2: b", "3.6"),
    ("glue_mnli_v200", {"premise": "P.", "hypothesis": "H.", "label": 2},
     "mnli hypothesis: H. premise: P.", "contradiction"),
    ("glue_mnli_matched_v200", {"premise": "P.", "hypothesis": "H.",
                                "label": 1},
     "mnli hypothesis: H. premise: P.", "neutral"),
    ("glue_mnli_mismatched_v200", {"premise": "P.", "hypothesis": "H.",
                                   "label": 0},
     "mnli hypothesis: H. premise: P.", "entailment"),
    ("glue_qnli_v200", {"question": "Q?", "sentence": "S.", "label": 1},
     "qnli question: Q? sentence: S.", "not_entailment"),
    ("glue_rte_v200", {"sentence1": "A.", "sentence2": "B.", "label": 0},
     "rte sentence1: A. sentence2: B.", "entailment"),
    ("super_glue_boolq_v102", {"question": "is it", "passage": "It is.",
                               "label": 1},
     "boolq passage: It is. question: is it", "True"),
    ("super_glue_cb_v102", {"premise": "P.", "hypothesis": "H.", "label": 2},
     "cb hypothesis: H. premise: P.", "neutral"),
    ("super_glue_copa_v102", {"premise": "It rained.", "choice1": "Wet.",
                              "choice2": "Dry.", "question": "effect",
                              "label": 0},
     "copa choice1: Wet. choice2: Dry. premise: It rained. question: effect",
     "choice1"),
    ("super_glue_rte_v102", {"premise": "P.", "hypothesis": "H.", "label": 1},
     "rte hypothesis: H. premise: P.", "not_entailment"),
    ("super_glue_wic_v102", {"sentence1": "A bank.", "sentence2": "Bank it.",
                             "word": "bank", "label": 0},
     "wic sentence1: A bank. sentence2: Bank it. word: bank", "False"),
])
def test_t5_formats_and_taskless(name, raw, inputs, targets):
  full, taskless, tgt = _both(name, raw)
  assert (full, tgt) == (inputs, targets)
  assert taskless == inputs.split(" ", 1)[1]


def test_unlabelled_target_is_unk():
  (ex,) = run_text("glue_rte_v200", {"sentence1": "a", "sentence2": "b",
                                     "label": -1})
  assert ex["targets"] == "<unk>"


def test_multirc_removes_markup_after_join():
  full, taskless, tgt = _both("super_glue_multirc_v102", {
      "question": "Q<br>?", "answer": "<b>A</b>", "paragraph": "P.",
      "label": 1, "idx": {"paragraph": 1, "question": 2, "answer": 3}})
  assert full == "multirc question: Q ? answer: A paragraph: P."
  assert taskless == "question: Q ? answer: A paragraph: P."
  assert tgt == "True"


def test_record_per_answer_and_taskless():
  raw = {"passage": "Rome is old.\n@highlight\nIt is", "query": "@placeholder "
         "is old", "entities": ["Rome"], "answers": ["Rome"],
         "idx": {"passage": 0, "query": 4}}
  (ex,) = run_text("super_glue_record_v102", raw)
  assert ex["inputs"] == ("record query: @placeholder is old entities: Rome "
                          "passage: Rome is old. It is")
  assert ex["targets"] == "Rome" and ex["answers"] == ["Rome"]
  (tl,) = run_text("taskless_super_glue_record_v102", raw)
  assert tl["inputs"] == ex["inputs"][len("record "):]


_WSC = {"text": "Mark told Pete many lies . He should be skeptical .",
        "span1_text": "Pete", "span1_index": 2, "span2_text": "He",
        "span2_index": 6, "idx": 3}


def test_wsc_simple_train_keeps_correct_referents():
  exs = run_text("super_glue_wsc_v102_simple_train", {**_WSC, "label": 1},
                 {**_WSC, "label": 0})
  assert len(exs) == 1
  assert exs[0]["inputs"] == ("wsc: Mark told Pete many lies . *He* should "
                              "be skeptical .")
  assert exs[0]["targets"] == "Pete"
  (tl,) = run_text("taskless_super_glue_wsc_v102_simple_train",
                   {**_WSC, "label": 1})
  assert tl["inputs"] == "Mark told Pete many lies . *He* should be skeptical ."


def test_wsc_simple_eval_keeps_all_and_scores_referent():
  exs = run_text("super_glue_wsc_v102_simple_eval", {**_WSC, "label": 1},
                 {**_WSC, "label": 0})
  assert [e["label"] for e in exs] == [1, 0]
  task = seqio.get_mixture_or_task("super_glue_wsc_v102_simple_eval")
  ex = {"targets_pretokenized": b"Pete", "label": 0}
  assert task.postprocess_fn("pete", example=ex) == 1
  assert task.postprocess_fn("x", example=ex, is_target=True) == 0


def test_wsc_rejects_span_mismatch():
  with pytest.raises(tf.errors.InvalidArgumentError, match="span2_index"):
    run_text("super_glue_wsc_v102_simple_eval",
             {**_WSC, "span2_index": 5, "label": 1})


def test_labels_and_splits():
  assert post.label_strings("taskless_glue_sst2_v200") == ["negative",
                                                           "positive"]
  assert post.label_strings("super_glue_copa_v102") == ["choice1", "choice2"]
  assert seqio.get_mixture_or_task("glue_mnli_v200").splits == (
      "train", "validation_matched", "validation_mismatched")
  assert len(lester_tasks.task_names()) == 2 * len(lester_tasks.TASK_SPECS)
  assert lester_tasks.reference_sizes("taskless_super_glue_cb_v102") == {
      "train": 250, "validation": 56}


def test_local_source_on_shared_data(shared_data):
  sources.configure("local", str(shared_data))
  sources.clear_caches()
  try:
    for name in ("glue_rte_v200", "super_glue_cb_v102",
                 "taskless_super_glue_copa_v102", "glue_mnli_matched_v200"):
      task = seqio.get_mixture_or_task(name)
      for split in task.splits:
        assert task.num_input_examples(split) == (
            lester_tasks.reference_sizes(name)[split]), (name, split)
  finally:
    sources.reset()
