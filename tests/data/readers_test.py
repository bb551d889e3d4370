"""readers: the one TensorFlow-free reader of the official benchmark files.

The seqio side (`tests/data/seqio/sources_test.py`) checks the same readers
through tf.data against the TFDS feature signatures; these tests need no
TensorFlow (tests/imports_test.py checks the module imports without it).
"""
import gzip
import json

import pytest

from ptuning_jax.data import readers


def _write(path, text, gz=False, encoding="utf-8"):
  path.parent.mkdir(parents=True, exist_ok=True)
  opener = gzip.open if gz else open
  with opener(path, "wt", encoding=encoding) as f:
    f.write(text)
  return str(path)


def test_lines_drop_bom_and_read_gzip(tmp_path):
  plain = _write(tmp_path / "a.txt", "\ufeffx\ty\r\n\nz\n")
  assert list(readers.lines(plain)) == [(1, "x\ty"), (2, ""), (3, "z")]
  gz = _write(tmp_path / "a.jsonl.gz", '{"a": 1}\n\n{"a": 2}\n', gz=True)
  assert list(readers.jsonl(gz)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_jsonl_errors_name_file_and_line(tmp_path):
  path = _write(tmp_path / "val.jsonl", '{"a": 1}\n\n{oops\n')
  with pytest.raises(readers.DataFileError, match=rf"{path}:3: invalid JSON"):
    list(readers.jsonl(path))
  path = _write(tmp_path / "list.jsonl", '[1, 2]\n')
  with pytest.raises(readers.DataFileError, match=rf"{path}:1: expected a JSON object"):
    list(readers.jsonl(path))


def test_glue_tsv_keeps_quotes_and_drops_bom(tmp_path):
  # MRPC's files start with a BOM and hold literal quotes (no CSV quoting).
  path = _write(tmp_path / "dev.tsv", '\ufeffQuality\t#1 String\t#2 String\n'
                '1\tHe said " hi .\t"b"\n')
  read = readers.glue_tsv({"sentence1": "#1 String", "sentence2": "#2 String"},
                          "Quality", None)
  assert list(read(path)) == [{"sentence1": 'He said " hi .', "sentence2": '"b"',
                               "label": 1, "idx": 0}]


def test_glue_tsv_without_header_cola(tmp_path):
  path = _write(tmp_path / "train.tsv", "gj04\t1\t\tThe sailors rode.\n\n"
                "gj04\t0\t*\tRode sailors the.\n")
  read = readers.glue_tsv({"sentence": 3}, 1, None, header=False)
  assert [(e["sentence"], e["label"], e["idx"]) for e in read(path)] == [
      ("The sailors rode.", 1, 0), ("Rode sailors the.", 0, 1)]


def test_glue_tsv_errors_name_file_and_line(tmp_path):
  read = readers.glue_tsv({"a": "a"}, "label", ("no", "yes"))
  path = _write(tmp_path / "x.tsv", "a\tlabel\nq\tyes\nshort\n")
  with pytest.raises(readers.DataFileError,
                     match=rf"{path}:3: expected 2 tab-separated fields, got 1"):
    list(read(path))
  path = _write(tmp_path / "y.tsv", "a\tlabel\nq\tmaybe\n")
  with pytest.raises(readers.DataFileError, match=rf"{path}:2: label 'maybe'"):
    list(read(path))
  path = _write(tmp_path / "z.tsv", "b\tlabel\n")
  with pytest.raises(readers.DataFileError, match=rf"{path}:1: header .* lacks"):
    list(read(path))


def test_glue_tsv_labels_unlabelled_and_float(tmp_path):
  path = _write(tmp_path / "test.tsv", "index\tsentence\n0\tx\n")
  assert list(readers.glue_tsv({"s": "sentence"}, "label", None)(path)) == [
      {"s": "x", "label": -1, "idx": 0}]
  path = _write(tmp_path / "dev.tsv", "s1\ts2\tscore\na\tb\t3.800\n")
  (ex,) = readers.glue_tsv({"s1": "s1", "s2": "s2"}, "score", None,
                           label_type=float)(path)
  assert ex["label"] == 3.8


def test_super_glue_jsonl_labels_are_tfds_indices(tmp_path):
  path = _write(tmp_path / "val.jsonl", "".join(json.dumps(r) + "\n" for r in [
      {"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0},
      {"premise": "p", "hypothesis": "h", "idx": 1}]))
  assert [e["label"] for e in readers.super_glue_jsonl("cb")(path)] == [2, -1]
  path = _write(tmp_path / "copa.jsonl", json.dumps(
      {"premise": "p", "choice1": "a", "choice2": "b", "question": "cause",
       "label": 1, "idx": 0}) + "\n")
  assert next(readers.super_glue_jsonl("copa")(path))["label"] == 1
  path = _write(tmp_path / "bad.jsonl", json.dumps(
      {"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0})
      + '\n{"premise": 1}\n')
  with pytest.raises(readers.DataFileError, match=rf"{path}:2: not a SuperGLUE cb"):
    list(readers.super_glue_jsonl("cb")(path))


def test_yelp_csv_and_its_errors(tmp_path):
  path = _write(tmp_path / "test.csv", '"1","Bad food."\n"2","Great, ""really""."\n')
  assert [(e["text"], e["label"]) for e in readers.yelp_csv(path)] == [
      ("Bad food.", 0), ('Great, ""really"".', 1)]
  path = _write(tmp_path / "bad.csv", '"1","ok"\n3,nope\n')
  with pytest.raises(readers.DataFileError, match=rf"{path}:2"):
    list(readers.yelp_csv(path))


def test_mrqa_gz_header_is_required(tmp_path):
  path = _write(tmp_path / "x.jsonl.gz", '{"context": "c", "qas": []}\n', gz=True)
  with pytest.raises(readers.DataFileError, match=rf"{path}:1: expected the MRQA header"):
    list(readers.mrqa_jsonl_gz(path))

