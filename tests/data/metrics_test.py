"""Tests of ptuning_jax.data.metrics and .postprocessors."""
import math

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from ptuning_jax.data import metrics
from ptuning_jax.data.seqio import postprocessors as post


def test_accuracy_hand_and_invalid():
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, -1]) == {"accuracy": 50.0}
  assert metrics.accuracy(["a"], ["a"]) == {"accuracy": 100.0}


def test_metrics_reject_length_mismatch_and_empty():
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.accuracy([0, 1], [0])
  with pytest.raises(ValueError, match="at least one"):
    metrics.f1_binary([], [])


def test_f1_binary_hand_value():
  # tp=1 (idx 0), fp=1 (idx 2), fn=1 (idx 1) -> P=R=1/2, F1=1/2.
  assert metrics.f1_binary([1, 1, 0, 0], [1, 0, 1, 0])["f1"] == 50.0


def test_f1_binary_invalid_counts_as_wrong():
  targets = [1, 1, 0, 0, 1]
  preds = [1, -1, -1, 0, 1]  # invalid on a 1 -> 0 (fn), on a 0 -> 1 (fp).
  expected = 100 * sklearn.metrics.f1_score(targets, [1, 0, 1, 0, 1])
  assert metrics.f1_binary(targets, preds)["f1"] == pytest.approx(expected)
  # Hand: tp=2, fp=1, fn=1 -> F1 = 2/3.
  assert metrics.f1_binary(targets, preds)["f1"] == pytest.approx(200 / 3)


def test_f1_binary_rejects_non_binary_targets():
  with pytest.raises(ValueError, match="binary targets"):
    metrics.f1_binary([0, 2], [0, 1])


def test_matthews_vs_sklearn_and_hand():
  rng = np.random.default_rng(0)
  t = rng.integers(0, 2, 200)
  p = rng.integers(0, 2, 200)
  ref = 100 * sklearn.metrics.matthews_corrcoef(t, p)
  assert metrics.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(
      ref, abs=1e-9)
  # Hand: tp=1 tn=1 fp=1 fn=1 -> (1-1)/sqrt(16) = 0; perfect -> 100.
  assert metrics.matthews_corrcoef([1, 0, 1, 0], [1, 0, 0, 1])[
      "matthews_corrcoef"] == 0.0
  assert metrics.matthews_corrcoef([1, 0, 1], [1, 0, 1])[
      "matthews_corrcoef"] == pytest.approx(100.0)
  # Invalid predictions are wrong: same as flipping them.
  assert metrics.matthews_corrcoef([1, 0, 1, 0], [1, 0, -1, -1])[
      "matthews_corrcoef"] == pytest.approx(0.0)


def test_mean_multiclass_f1_hand_and_sklearn():
  t = [0, 0, 1, 1, 2, 2]
  p = [0, 1, 1, 1, 2, -1]
  # class 0: P=1 R=1/2 F=2/3; class 1: P=2/3 R=1 F=4/5;
  # class 2: P=1 R=1/2 F=2/3.
  hand = 100 * (2 / 3 + 4 / 5 + 2 / 3) / 3
  fn = metrics.mean_multiclass_f1(3)
  assert fn(t, p)["mean_3class_f1"] == pytest.approx(hand)
  ref = 100 * sklearn.metrics.f1_score(t, p, labels=[0, 1, 2], average="macro")
  assert fn(t, p)["mean_3class_f1"] == pytest.approx(ref)


def test_correlations_vs_scipy_and_constant():
  rng = np.random.default_rng(1)
  t = rng.uniform(0, 5, 50)
  p = t + rng.normal(0, 1, 50)
  assert metrics.pearson_corrcoef(t, p)["pearson_corrcoef"] == pytest.approx(
      100 * scipy.stats.pearsonr(t, p)[0])
  assert metrics.spearman_corrcoef(t, p)["spearman_corrcoef"] == pytest.approx(
      100 * scipy.stats.spearmanr(t, p)[0])
  assert metrics.pearson_corrcoef([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])[
      "pearson_corrcoef"] == pytest.approx(100.0)
  # Spearman is rank-based: monotone but nonlinear is still 100.
  assert metrics.spearman_corrcoef([1.0, 2.0, 3.0], [1.0, 8.0, 27.0])[
      "spearman_corrcoef"] == pytest.approx(100.0)
  constant = metrics.pearson_corrcoef([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
  assert constant == {"pearson_corrcoef": 0.0}


def test_normalize_squad():
  assert metrics.normalize_squad("The  Denver Broncos!") == "denver broncos"
  assert metrics.normalize_squad("an apple, a pear") == "apple pear"


def test_squad_max_over_gold_answers_hand():
  targets = [["Denver Broncos", "The Broncos"], ["Paris"]]
  preds = ["the broncos", "paris france"]
  out = metrics.squad(targets, preds)
  # ex1: EM 1 (matches 2nd gold); ex2: EM 0, F1 P=1/2 R=1 -> 2/3.
  assert out["em"] == pytest.approx(50.0)
  assert out["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
  assert metrics.squad(["x y"], ["z"]) == {"em": 0.0, "f1": 0.0}


def test_record_deduplicates_groups():
  targets = [{"value": ["cat", "kitty"], "group": (0, 0)},
             {"value": ["cat", "kitty"], "group": (0, 0)},
             {"value": ["dog"], "group": (0, 1)}]
  preds = [{"value": "kitty"}, {"value": "wrong"}, {"value": "a dog"}]
  assert metrics.record(targets, preds) == {"em": 100.0, "f1": 100.0}


def test_multirc_f1_and_exact_match():
  targets = [{"value": 1, "group": 0}, {"value": 0, "group": 0},
             {"value": 1, "group": 1}, {"value": 1, "group": 2}]
  preds = [{"value": 1}, {"value": 0}, {"value": 0}, {"value": -1}]
  # F1 over options: tp=1 fn=2 (the invalid one counts as 0) fp=0 -> 1/2.
  assert metrics.multirc_f1(targets, preds)["f1"] == pytest.approx(50.0)
  # Questions 0 right, 1 wrong, 2 invalid -> 1/3.
  assert metrics.multirc_exact_match(targets, preds)[
      "exact_match"] == pytest.approx(100 / 3)


def test_string_label_to_class_id():
  labels = ("negative", "positive")
  assert post.string_label_to_class_id(b"positive", labels) == 1
  assert post.string_label_to_class_id(" negative ", labels) == 0
  assert post.string_label_to_class_id("neutral", labels) == post.INVALID


def test_string_to_float_invalid_is_minus_one():
  assert post.string_to_float(b"3.4") == pytest.approx(3.4)
  assert post.string_to_float("three") == -1.0
  assert not math.isnan(post.string_to_float("nan?"))


def test_multirc_qa_record_postprocessors():
  ex = {"idx/question": 7, "idx/passage": 2, "idx/query": 5,
        "answers": [b"a", b"b"]}
  assert post.multirc("1", ("0", "1"), example=ex, is_target=True) == {
      "value": 1, "group": 7}
  assert post.multirc("yes", ("0", "1"), example=ex) == {"value": -1}
  assert post.qa(b"x", example=ex, is_target=True) == ["a", "b"]
  assert post.qa(b"x", example=ex) == "x"
  assert post.record("x", example=ex, is_target=True) == {
      "value": ["a", "b"], "group": (2, 5)}


def test_wsc_simple_postprocessor():
  ex = {"targets_pretokenized": b"the city councilmen", "label": 1}
  assert post.wsc_simple("councilmen", example=ex) == 1
  assert post.wsc_simple("The demonstrators", example=ex) == 0
  assert post.wsc_simple("x", example=ex, is_target=True) == 1
  ex2 = {"targets_pretokenized": b"Bob", "label": 0}
  assert post.wsc_simple("Bob's hat", example=ex2) == 0


@pytest.mark.needs("tensorflow", "seqio")
def test_register_labels_validates():
  with pytest.raises(ValueError, match="distinct"):
    post.register_labels("x_test_task", ["a", "a"])
  with pytest.raises(KeyError, match="no class labels"):
    post.label_strings("no_such_task_xyz")
