"""glue: per-task pair formats, arrays, BoolQ split, metrics (percentages).

Dimension letters: N examples, C choices, T max length.
"""
import json
import math
import zlib

import numpy as np
import pytest

from ptuning_jax.data import glue
from ptuning_jax.data import readers


class FakeTokenizer:
  """Whitespace tokenizer with BERT's pair template; ids are word lengths + 10
  (enough to check placement, padding and truncation)."""
  pad_id = 0

  def encode_pair(self, a, b=None, max_length=None):
    ids_a = [len(w) + 10 for w in a.split()]
    ids_b = [len(w) + 10 for w in b.split()] if b else None
    if max_length is not None:
      budget = max_length - (3 if ids_b is not None else 2)
      while len(ids_a) + len(ids_b or []) > budget:
        if ids_b and len(ids_b) > len(ids_a):
          ids_b.pop()
        else:
          ids_a.pop()
    ids = [1] + ids_a + [2]
    types = [0] * len(ids)
    if ids_b is not None:
      ids += ids_b + [2]
      types += [1] * (len(ids_b) + 1)
    return ids, types


def _write_jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_tsv(path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join("\t".join(fields) + "\n" for fields in lines), encoding="utf-8")


# ----------------------------------------------------------------- formats


def test_superglue_pair_formats():
  # Examples as `readers.super_glue_jsonl` yields them: TFDS label indices.
  rte = glue.get_task("rte").to_example(
      {"premise": "p", "hypothesis": "h", "label": 1}, "w")
  assert rte == ([("p", "h")], 1)
  cb = glue.get_task("cb").to_example(
      {"premise": "p", "hypothesis": "h", "label": 2}, "w")
  assert cb == ([("p", "h")], 2)
  wic = glue.get_task("wic").to_example(
      {"word": "bank", "sentence1": "s one", "sentence2": "s two", "label": 1}, "w")
  assert wic == ([("bank: s one", "bank: s two")], 1)
  boolq = glue.get_task("boolq").to_example(
      {"question": "q", "passage": "p", "label": 0}, "w")
  assert boolq == ([("q", "p")], 0)


def test_tasks_read_through_the_shared_readers(tmp_path):
  # The official JSON labels become TFDS indices in `readers` (one reader of
  # the files for the seqio tasks and for this module).
  _write_jsonl(tmp_path / "super_glue/rte/val.jsonl", [
      {"premise": "p", "hypothesis": "h", "label": "not_entailment", "idx": 0},
      {"premise": "p2", "hypothesis": "h2", "label": "entailment", "idx": 1}])
  pairs, labels = glue.read_examples(glue.get_task("rte"), tmp_path, "eval")
  assert pairs == [[("p", "h")], [("p2", "h2")]] and labels == [1, 0]
  _write_jsonl(tmp_path / "super_glue/wic/val.jsonl", [
      {"word": "w", "sentence1": "a", "sentence2": "b", "label": True, "idx": 0,
       "start1": 0, "end1": 1, "start2": 0, "end2": 1}])
  assert glue.read_examples(glue.get_task("wic"), tmp_path, "eval")[1] == [1]


@pytest.mark.parametrize("question,joiner", [("cause", "because"), ("effect", "so")])
def test_copa_is_one_pair_per_choice(question, joiner):
  pairs, label = glue.get_task("copa").to_example(
      {"premise": "It rained.", "choice1": "A", "choice2": "B",
       "question": question, "label": 1}, "w")
  assert pairs == [(f"It rained. {joiner}", "A"), (f"It rained. {joiner}", "B")]
  assert label == 1


def test_bad_label_names_the_file_and_line(tmp_path):
  path = tmp_path / "super_glue/rte/val.jsonl"
  _write_jsonl(path, [{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0},
                      {"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 1}])
  with pytest.raises(readers.DataFileError, match=rf"{path}:2: .*'maybe'"):
    glue.read_examples(glue.get_task("rte"), tmp_path, "eval")
  path = tmp_path / "glue/sst2/dev.tsv"
  _write_tsv(path, [("sentence", "label"), ("good", "1"), ("bad", "2")])
  with pytest.raises(ValueError, match=r"dev\.tsv \(example 1\): label 2 is not a class"):
    glue.read_examples(glue.get_task("sst2"), tmp_path, "eval")
  with pytest.raises(ValueError, match=r"label -1 is not a class index"):
    glue.get_task("rte").to_example({"premise": "p", "hypothesis": "h", "label": -1}, "w")
  with pytest.raises(ValueError, match="no field 'hypothesis'"):
    glue.get_task("cb").to_example({"premise": "p", "label": 2}, "w")


def _fake_data_dir(root):
  _write_jsonl(root / "super_glue/copa/train.jsonl", [
      {"premise": "a b", "choice1": "c", "choice2": "d e f", "question": "cause",
       "label": 0, "idx": 0}])
  _write_jsonl(root / "super_glue/copa/val.jsonl", [
      {"premise": "a", "choice1": "b", "choice2": "c", "question": "effect",
       "label": 1, "idx": i} for i in range(3)])
  _write_tsv(root / "glue/cola/train.tsv", [("src", "1", "", "the cat sat"),
                                            ("src", "0", "*", "cat the")])
  _write_tsv(root / "glue/cola/dev.tsv", [("src", "1", "", "a dog ran")])
  header = ("index", "genre", "filename", "year", "old_index", "source1", "source2",
            "sentence1", "sentence2", "score")
  row = ("0", "g", "f", "y", "o", "s", "s", "a man runs", "a person runs", "3.800")
  _write_tsv(root / "glue/stsb/train.tsv", [header, row])
  _write_tsv(root / "glue/stsb/dev.tsv", [header, row, row])
  return root


def test_load_task_arrays(tmp_path):
  data_dir = _fake_data_dir(tmp_path)
  copa = glue.load_task("copa", data_dir, FakeTokenizer(), max_length=8)
  ids = copa.train.arrays["input_ids"]
  assert ids.shape == (1, 2, 8) and ids.dtype == np.int32  # [N, C, T]
  # "[CLS] a b because [SEP] c [SEP]", then padding.
  np.testing.assert_array_equal(ids[0, 0], [1, 11, 11, 17, 2, 11, 2, 0])
  np.testing.assert_array_equal(copa.train.arrays["attention_mask"][0, 0],
                                [1, 1, 1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(copa.train.arrays["token_type_ids"][0, 0],
                                [0, 0, 0, 0, 0, 1, 1, 0])
  assert copa.train.arrays["label"].tolist() == [0]
  assert len(copa.eval) == 3 and copa.eval_total == 3

  cola = glue.load_task("cola", data_dir, FakeTokenizer(), max_length=4)
  # No header line; "the cat sat" is truncated to fit [CLS] x x [SEP].
  np.testing.assert_array_equal(cola.train.arrays["input_ids"][0], [1, 13, 13, 2])
  assert cola.train.arrays["label"].tolist() == [1, 0]

  stsb = glue.load_task("stsb", data_dir, FakeTokenizer(), max_length=16)
  assert stsb.train.arrays["label"].dtype == np.float32
  np.testing.assert_allclose(stsb.eval.arrays["label"], [3.8, 3.8])


def test_eval_subset_is_fixed_and_in_file_order(tmp_path):
  data_dir = _fake_data_dir(tmp_path)
  a = glue.load_task("copa", data_dir, FakeTokenizer(), 8, max_eval_examples=2)
  b = glue.load_task("copa", data_dir, FakeTokenizer(), 8, max_eval_examples=2)
  assert len(a.eval) == 2 and a.eval_total == 3
  for key in a.eval.arrays:
    np.testing.assert_array_equal(a.eval.arrays[key], b.eval.arrays[key])
  idx = glue.subset_indices(100, 10, "k")
  assert len(set(idx.tolist())) == 10 and np.all(np.diff(idx) > 0)
  assert not np.array_equal(idx, glue.subset_indices(100, 10, "other"))


def test_missing_file_and_unknown_task(tmp_path):
  with pytest.raises(FileNotFoundError, match="super_glue/rte/train.jsonl"):
    glue.load_task("rte", tmp_path, FakeTokenizer())
  with pytest.raises(ValueError, match="Unknown task 'mnli'"):
    glue.get_task("mnli")


# ----------------------------------------------------------------- metrics
# The hand-written metrics that data/glue.py had before it called
# data/metrics.py (fractions), kept here as the oracle the percentages must
# reproduce, edge cases included.


def _old_f1(p, y, positive=1):
  p, y = np.asarray(p) == positive, np.asarray(y) == positive
  denom = float(np.sum(p) + np.sum(y))
  return 2.0 * float(np.sum(p & y)) / denom if denom else 0.0


def _old_macro_f1(p, y, num_classes):
  return float(np.mean([_old_f1(p, y, c) for c in range(num_classes)]))


def _old_matthews(p, y):
  p, y = np.asarray(p) == 1, np.asarray(y) == 1
  tp, tn = float(np.sum(p & y)), float(np.sum(~p & ~y))
  fp, fn = float(np.sum(p & ~y)), float(np.sum(~p & y))
  denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return (tp * tn - fp * fn) / denom if denom else 0.0


def _old_pearson(x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denom = math.sqrt(float(np.sum(x * x) * np.sum(y * y)))
  return float(np.sum(x * y) / denom) if denom else 0.0


def _old_spearman(x, y):
  def ranks(v):
    v = np.asarray(v, np.float64)
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    r[order] = np.arange(len(v))
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=r) / counts)[inverse]
  return _old_pearson(ranks(x), ranks(y))


def _logits(predictions, num_classes):
  return np.eye(num_classes)[np.asarray(predictions)]  # [N, C]


def _old_metrics(spec, outputs, labels):
  if spec.kind == "regression":
    values = {"pearson": _old_pearson(outputs, labels),
              "spearman": _old_spearman(outputs, labels)}
  else:
    p = np.argmax(outputs, -1)
    values = {"accuracy": float(np.mean(p == labels)), "f1": _old_f1(p, labels),
              "macro_f1": _old_macro_f1(p, labels, outputs.shape[-1]),
              "matthews": _old_matthews(p, labels)}
  out = {k: values[k] for k in spec.metrics}
  out["score"] = float(np.mean(list(out.values())))
  return out


def _assert_percent_of_old(spec, outputs, labels, exact=False):
  got = glue.compute_metrics(spec, outputs, labels)
  want = _old_metrics(spec, outputs, labels)
  assert set(got) == set(want)
  for k in want:
    if exact:
      assert got[k] == 100 * want[k], (spec.name, k, got[k], want[k])
    else:
      assert got[k] == pytest.approx(100 * want[k], abs=1e-10), (spec.name, k)
  return got


def test_metrics_are_percentages_of_the_old_implementation():
  rng = np.random.default_rng(0)
  for name, classes in (("cb", 3), ("mrpc", 2), ("cola", 2), ("rte", 2)):
    labels = rng.integers(0, classes, 200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, classes, 200))
    _assert_percent_of_old(glue.get_task(name), _logits(preds, classes), labels)
  x = np.round(rng.normal(size=300), 1)  # ties
  y = x + rng.normal(size=300)
  _assert_percent_of_old(glue.get_task("stsb"), x, y)


def test_metric_edge_cases_agree_exactly():
  cb, mrpc, cola, stsb = (glue.get_task(n) for n in ("cb", "mrpc", "cola", "stsb"))
  # Constant predictions: correlations and Matthews are 0, not NaN.
  out = _assert_percent_of_old(stsb, np.full(5, 2.5), np.arange(5.0), exact=True)
  assert out == {"pearson": 0.0, "spearman": 0.0, "score": 0.0}
  out = _assert_percent_of_old(cola, np.zeros((4, 2)), np.array([0, 1, 0, 1]),
                               exact=True)
  assert out["matthews"] == 0.0
  # The positive class is never predicted (and once, never present): F1 0.
  out = _assert_percent_of_old(mrpc, _logits([0, 0, 0, 0], 2), np.array([1, 0, 1, 0]),
                               exact=True)
  assert out["f1"] == 0.0 and out["accuracy"] == 50.0
  assert _assert_percent_of_old(mrpc, _logits([0, 0], 2), np.array([0, 0]),
                                exact=True)["f1"] == 0.0
  # CB: class 2 absent from a subset's labels and predictions still counts
  # in the macro F1 (3 classes, its F1 is 0).
  out = _assert_percent_of_old(cb, _logits([0, 1, 1, 0], 3), np.array([0, 1, 0, 0]))
  assert out["macro_f1"] == pytest.approx(100 * (0.8 + 2 / 3) / 3, abs=1e-10)


def test_compute_metrics_per_task():
  cb = glue.get_task("cb")
  logits = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 0, 3.0]])
  out = glue.compute_metrics(cb, logits, np.array([0, 1, 2, 2]))
  assert set(out) == {"accuracy", "macro_f1", "score"}
  assert out["accuracy"] == 75.0
  assert out["score"] == pytest.approx((out["accuracy"] + out["macro_f1"]) / 2)
  stsb = glue.get_task("stsb")
  out = glue.compute_metrics(stsb, np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 5.0]))
  assert set(out) == {"pearson", "spearman", "score"} and out["spearman"] == 100.0
  with pytest.raises(ValueError, match="2 outputs for 3 labels"):
    glue.compute_metrics(cb, logits[:2], np.zeros(3))


# --------------------------------------------------------------- real data


OFFICIAL_SIZES = {"rte": (2490, 277), "cb": (250, 56), "wic": (5428, 638),
                  "copa": (400, 100), "sst2": (67349, 872), "mrpc": (3667, 408),
                  "cola": (8551, 1043), "stsb": (5749, 1500)}


@pytest.mark.parametrize("task", sorted(OFFICIAL_SIZES))
def test_real_files_read_completely(shared_data, task):
  spec = glue.get_task(task)
  for split, size in zip(glue.SPLITS, OFFICIAL_SIZES[task]):
    pairs, labels = glue.read_examples(spec, shared_data, split)
    assert len(pairs) == len(labels) == size
    if spec.kind != "regression":
      assert set(labels) == set(range(len(spec.label_names)))


def test_real_boolq_split_is_disjoint_by_passage(shared_data):
  spec = glue.get_task("boolq")
  rows = list(spec.reader(str(shared_data / spec.files["eval"])))
  train = spec.split_fn("train", rows)
  evaluation = spec.split_fn("eval", rows)
  assert len(train) + len(evaluation) == len(rows) == 3270
  assert not {r["passage"] for r in train} & {r["passage"] for r in evaluation}
  assert 0.25 < len(evaluation) / len(rows) < 0.35
  assert all(zlib.crc32(r["passage"].encode()) % 10 < 3 for r in evaluation)
