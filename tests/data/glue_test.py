"""glue_data: file readers, per-task pair formats, arrays, BoolQ split, metrics.

Dimension letters: N examples, C choices, T max length.
"""
import json
import zlib

import numpy as np
import pytest

from ptuning_jax.data import glue


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


# ----------------------------------------------------------------- readers


def test_read_tsv_keeps_quotes_and_drops_bom(tmp_path):
  path = tmp_path / "dev.tsv"
  path.write_text("\ufeffQuality\t#1 String\n1\tHe said \" hi .\n", encoding="utf-8")
  assert glue.read_tsv(path) == [{"Quality": "1", "#1 String": 'He said " hi .'}]


def test_read_tsv_bad_row_names_file_and_line(tmp_path):
  path = tmp_path / "x.tsv"
  path.write_text("a\tb\n1\t2\n3\n")
  with pytest.raises(ValueError, match=r"x\.tsv:3: 1 fields, expected 2"):
    glue.read_tsv(path)


def test_read_jsonl_bad_line_names_file_and_line(tmp_path):
  path = tmp_path / "val.jsonl"
  path.write_text('{"a": 1}\n\n{oops\n')
  with pytest.raises(ValueError, match=r"val\.jsonl:3: not valid JSON"):
    glue.read_jsonl(path)


# ----------------------------------------------------------------- formats


def test_superglue_pair_formats():
  rte = glue.get_task("rte").to_example(
      {"premise": "p", "hypothesis": "h", "label": "not_entailment"}, "w")
  assert rte == ([("p", "h")], 1)
  cb = glue.get_task("cb").to_example(
      {"premise": "p", "hypothesis": "h", "label": "neutral"}, "w")
  assert cb == ([("p", "h")], 2)
  wic = glue.get_task("wic").to_example(
      {"word": "bank", "sentence1": "s one", "sentence2": "s two", "label": True}, "w")
  assert wic == ([("bank: s one", "bank: s two")], 1)
  boolq = glue.get_task("boolq").to_example(
      {"question": "q", "passage": "p", "label": False}, "w")
  assert boolq == ([("q", "p")], 0)


@pytest.mark.parametrize("question,joiner", [("cause", "because"), ("effect", "so")])
def test_copa_is_one_pair_per_choice(question, joiner):
  pairs, label = glue.get_task("copa").to_example(
      {"premise": "It rained.", "choice1": "A", "choice2": "B",
       "question": question, "label": 1}, "w")
  assert pairs == [(f"It rained. {joiner}", "A"), (f"It rained. {joiner}", "B")]
  assert label == 1


def test_bad_label_names_the_example():
  with pytest.raises(ValueError, match=r"f\.jsonl \(example 3\): label 'maybe'"):
    glue.get_task("rte").to_example(
        {"premise": "p", "hypothesis": "h", "label": "maybe"}, "f.jsonl (example 3)")
  with pytest.raises(ValueError, match="no field 'hypothesis'"):
    glue.get_task("cb").to_example({"premise": "p", "label": "neutral"}, "w")


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


def test_metrics_match_sklearn_and_scipy():
  sklearn_metrics = pytest.importorskip("sklearn.metrics")
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 200)
  preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 3, 200))
  assert glue.accuracy(preds, labels) == pytest.approx(
      sklearn_metrics.accuracy_score(labels, preds), abs=1e-12)
  assert glue.macro_f1(preds, labels, 3) == pytest.approx(
      sklearn_metrics.f1_score(labels, preds, average="macro"), abs=1e-12)
  b_labels, b_preds = labels % 2, preds % 2
  assert glue.f1_binary(b_preds, b_labels) == pytest.approx(
      sklearn_metrics.f1_score(b_labels, b_preds), abs=1e-12)
  assert glue.matthews(b_preds, b_labels) == pytest.approx(
      sklearn_metrics.matthews_corrcoef(b_labels, b_preds), abs=1e-12)
  x = np.round(rng.normal(size=300), 1)  # ties
  y = x + rng.normal(size=300)
  assert glue.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
  assert glue.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_compute_metrics_per_task():
  cb = glue.get_task("cb")
  logits = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 0, 3.0]])
  out = glue.compute_metrics(cb, logits, np.array([0, 1, 2, 2]))
  assert set(out) == {"accuracy", "macro_f1", "score"}
  assert out["accuracy"] == 0.75
  assert out["score"] == pytest.approx((out["accuracy"] + out["macro_f1"]) / 2)
  stsb = glue.get_task("stsb")
  out = glue.compute_metrics(stsb, np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 5.0]))
  assert set(out) == {"pearson", "spearman", "score"} and out["spearman"] == 1.0
  with pytest.raises(ValueError, match="2 outputs for 3 labels"):
    glue.compute_metrics(cb, logits[:2], np.zeros(3))
  # Degenerate predictions give 0, not NaN.
  cola = glue.get_task("cola")
  assert glue.compute_metrics(cola, np.zeros((4, 2)), np.array([0, 1, 0, 1]))[
      "matthews"] == 0.0


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
  rows = glue.read_jsonl(shared_data / spec.files["eval"])
  train = spec.split_fn("train", rows)
  evaluation = spec.split_fn("eval", rows)
  assert len(train) + len(evaluation) == len(rows) == 3270
  assert not {r["passage"] for r in train} & {r["passage"] for r in evaluation}
  assert 0.25 < len(evaluation) / len(rows) < 0.35
  assert all(zlib.crc32(r["passage"].encode()) % 10 < 3 for r in evaluation)
