"""Tests of ptuning_jax.data.seqio.sources: configuration, local readers, TFDS."""
import gzip
import json
import os

import gin
import pytest
import tensorflow_datasets as tfds

from ptuning_jax.data import readers
from ptuning_jax.data.seqio import sources


@pytest.fixture(autouse=True)
def _fresh_source_config(monkeypatch):
  for var in (sources.SOURCE_ENV, sources.DATA_DIR_ENV,
              sources.TFDS_DATA_DIR_ENV):
    monkeypatch.delenv(var, raising=False)
  sources.reset()
  sources.clear_caches()
  yield
  gin.clear_config()
  sources.reset()
  sources.clear_caches()


def _read(raw_name, split, data_dir):
  raw = sources.raw_dataset(raw_name)
  cfg = sources.SourceConfig("local", str(data_dir))
  return list(tfds.as_numpy(sources.read_raw(raw, split, cfg, task="t")))


def _write(path, text, gz=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  opener = gzip.open if gz else open
  with opener(path, "wt", encoding="utf-8") as f:
    f.write(text)


# ------------------------------------------------------------ configuration


def test_default_is_tfds():
  sources.reset()
  assert sources.current_config() == sources.SourceConfig("tfds", None, None)


def test_env_then_explicit(monkeypatch, tmp_path):
  monkeypatch.setenv(sources.SOURCE_ENV, "local")
  monkeypatch.setenv(sources.DATA_DIR_ENV, "/env/dir")
  assert sources.current_config() == sources.SourceConfig("local", "/env/dir")
  sources.configure("tfds", tfds_data_dir=str(tmp_path))
  assert sources.current_config() == sources.SourceConfig(
      "tfds", None, str(tmp_path))
  config = sources.SourceConfig("local", "/explicit/dir")
  assert sources.configure(config) is config
  assert sources.current_config() is config
  sources.reset()
  assert sources.current_config().data_dir == "/env/dir"


def test_gin_bindings_are_not_read_by_the_library():
  # Gin wires runs (SeqioData.source); the module never consults gin, so a
  # binding of a function nobody calls through gin changes nothing.
  gin.parse_config("""
      from __gin__ import dynamic_registration
      from ptuning_jax.data.seqio import sources
      sources.configure.source = 'local'
      sources.configure.data_dir = '/gin/dir'
  """)
  assert sources.current_config() == sources.SourceConfig("tfds", None, None)


def test_config_errors():
  with pytest.raises(ValueError, match="not one of"):
    sources.configure("hf")
  with pytest.raises(ValueError, match="needs a data directory"):
    sources.configure("local")
  with pytest.raises(ValueError, match="not both"):
    sources.configure(sources.SourceConfig(), data_dir="/x")


def test_missing_file_names_path_and_task(tmp_path):
  raw = sources.raw_dataset("glue/rte")
  cfg = sources.SourceConfig("local", str(tmp_path))
  with pytest.raises(FileNotFoundError) as e:
    sources.read_raw(raw, "train", cfg, task="mpt_rte")
  assert "mpt_rte" in str(e.value)
  assert str(tmp_path / "glue" / "rte" / "train.tsv") in str(e.value)


def test_malformed_tsv_names_file_and_line(tmp_path):
  path = tmp_path / "glue" / "rte" / "dev.tsv"
  _write(str(path), "index\tsentence1\tsentence2\tlabel\n"
         "0\ta\tb\tentailment\n1\tonly two\n")
  with pytest.raises(Exception, match=f"{path}:3: expected 4 tab-separated"):
    _read("glue/rte", "validation", tmp_path)
  raw = sources.raw_dataset("glue/rte")
  reader = raw.local["validation"][0].reader
  with pytest.raises(readers.DataFileError, match=f"{path}:3"):
    list(reader(str(path)))


def test_bad_label_names_file_and_line(tmp_path):
  path = tmp_path / "glue" / "rte" / "dev.tsv"
  _write(str(path), "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
  reader = sources.raw_dataset("glue/rte").local["validation"][0].reader
  with pytest.raises(readers.DataFileError, match=f"{path}:2: label 'maybe'"):
    list(reader(str(path)))


def test_qqp_drops_short_rows_like_tfds(tmp_path):
  _write(str(tmp_path / "glue" / "qqp" / "train.tsv"),
         "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
         "0\t1\t2\tA?\tB?\t1\n1\t3\t4\tbroken\n2\t5\t6\tC?\tD?\t0\n")
  exs = _read("glue/qqp", "train", tmp_path)
  assert [(e["question1"], e["label"], e["idx"]) for e in exs] == [
      (b"A?", 1, 0), (b"C?", 0, 2)]


# ------------------------------------------------------- formats (synthetic)


def test_cola_without_header(tmp_path):
  _write(str(tmp_path / "glue" / "cola" / "dev.tsv"),
         "gj04\t1\t\tThe sailors rode.\ngj04\t0\t*\tRode sailors the.\n")
  exs = _read("glue/cola", "validation", tmp_path)
  assert [(e["sentence"], e["label"], e["idx"]) for e in exs] == [
      (b"The sailors rode.", 1, 0), (b"Rode sailors the.", 0, 1)]


def test_mrpc_from_glue_sources(tmp_path):
  d = tmp_path / "glue" / "mrpc" / "source"
  _write(str(d / "msr_paraphrase_train.txt"),
         "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
         "1\t1\t2\ta\tb\n0\t3\t4\tc\td\n1\t5\t6\te\tf\n")
  _write(str(d / "dev_ids.tsv"), "3\t4\n")
  exs = _read("glue/mrpc", "train", tmp_path)
  assert [(e["sentence1"], e["label"], e["idx"]) for e in exs] == [
      (b"a", 1, 0), (b"e", 1, 2)]


def test_record_jsonl(tmp_path):
  row = {"idx": 3, "passage": {"text": "Paris is big. London too.",
                               "entities": [{"start": 0, "end": 4},
                                            {"start": 14, "end": 19},
                                            {"start": 0, "end": 4}]},
         "qas": [{"idx": 11, "query": "@placeholder is big.",
                  "answers": [{"start": 0, "end": 4, "text": "Paris"},
                              {"start": 0, "end": 4, "text": "Paris"}]}]}
  _write(str(tmp_path / "super_glue" / "record" / "val.jsonl"),
         json.dumps(row) + "\n")
  (ex,) = _read("super_glue/record", "validation", tmp_path)
  assert list(ex["entities"]) == [b"London", b"Paris"]
  assert list(ex["answers"]) == [b"Paris"]
  assert (ex["idx"]["passage"], ex["idx"]["query"]) == (3, 11)


def test_super_glue_bad_record_names_line(tmp_path):
  path = tmp_path / "super_glue" / "cb" / "val.jsonl"
  _write(str(path), json.dumps({"premise": "p", "hypothesis": "h", "idx": 0,
                                "label": "neutral"}) + "\n{\"premise\": 1}\n")
  reader = sources.raw_dataset("super_glue/cb").local["validation"][0].reader
  with pytest.raises(readers.DataFileError, match=f"{path}:2"):
    list(reader(str(path)))


def test_mrqa_jsonl_gz(tmp_path):
  lines = [{"header": {"dataset": "NewsQA", "split": "dev"}},
           {"context": " The cat sat. ", "qas": [
               {"qid": "q1", "question": " Who sat? ", "answers": ["cat",
                                                                  "The cat"]},
               {"qid": "q2", "question": "Where?", "answers": ["mat"]}]}]
  _write(str(tmp_path / "mrqa" / "dev" / "NewsQA.jsonl.gz"),
         "\n".join(json.dumps(x) for x in lines) + "\n", gz=True)
  exs = _read("mrqa/news_qa", "validation", tmp_path)
  assert [(e["qid"], e["question"], list(e["answers"])) for e in exs] == [
      (b"q1", b"Who sat?", [b"cat", b"The cat"]), (b"q2", b"Where?", [b"mat"])]
  assert exs[0]["context"] == b"The cat sat." and exs[0]["subset"] == b"NewsQA"


def test_squad_json(tmp_path):
  data = {"data": [{"title": "T", "paragraphs": [{"context": "ctx", "qas": [
      {"id": "a1", "question": "q?", "answers": [
          {"text": "x", "answer_start": 0}, {"text": "xy", "answer_start": 0}]}
  ]}]}]}
  _write(str(tmp_path / "squad" / "dev-v1.1.json"), json.dumps(data))
  (ex,) = _read("squad/v1.1", "validation", tmp_path)
  assert list(ex["answers"]["text"]) == [b"x", b"xy"]
  assert list(ex["answers"]["answer_start"]) == [0, 0]


def test_winogrande_yelp_paws_scitail(tmp_path):
  _write(str(tmp_path / "other" / "winogrande" / "dev.jsonl"), json.dumps(
      {"qID": "x", "sentence": "A _ b.", "option1": "o1", "option2": "o2",
       "answer": "2"}) + "\n")
  (w,) = _read("winogrande", "validation", tmp_path)
  assert (w["option2"], w["label"]) == (b"o2", 1)
  _write(str(tmp_path / "other" / "yelp_polarity" / "test.csv"),
         '"1","Bad food."\n"2","Great, ""really""."\n')
  ys = _read("yelp_polarity_reviews", "test", tmp_path)
  assert [(y["text"], y["label"]) for y in ys] == [
      (b"Bad food.", 0), (b'Great, ""really"".', 1)]
  _write(str(tmp_path / "other" / "paws_wiki" / "dev.tsv"),
         "id\tsentence1\tsentence2\tlabel\n1\ta b\tb a\t0\n")
  (p,) = _read("paws_wiki/labeled_final_tokenized", "validation", tmp_path)
  assert (p["sentence2"], p["label"]) == (b"b a", 0)
  _write(str(tmp_path / "other" / "scitail" / "scitail_1.0_dev.txt"),
         json.dumps({"sentence1": "s1", "sentence2": "s2",
                     "gold_label": "neutral"}) + "\n")
  (s,) = _read("sci_tail", "validation", tmp_path)
  assert (s["premise"], s["label"]) == (b"s1", 1)
  _write(str(tmp_path / "other" / "scitail" / "scitail_1.0_train.tsv"),
         "p\th\tentails\n")
  (s,) = _read("sci_tail", "train", tmp_path)
  assert (s["hypothesis"], s["label"]) == (b"h", 0)


def test_yelp_malformed_line(tmp_path):
  path = tmp_path / "other" / "yelp_polarity" / "test.csv"
  _write(str(path), '"1","ok"\n3,nope\n')
  reader = sources.raw_dataset("yelp_polarity_reviews").local["test"][0].reader
  with pytest.raises(readers.DataFileError, match=f"{path}:2"):
    list(reader(str(path)))


# ------------------------------------------------------ real shared files

# raw dataset, split -> examples in the official release.
_SHARED_COUNTS = {
    ("glue/cola", "train"): 8551, ("glue/cola", "validation"): 1043,
    ("glue/sst2", "train"): 67349, ("glue/sst2", "validation"): 872,
    ("glue/mrpc", "train"): 3668, ("glue/mrpc", "validation"): 408,
    ("glue/stsb", "train"): 5749, ("glue/stsb", "validation"): 1500,
    ("glue/qnli", "validation"): 5463, ("glue/rte", "train"): 2490,
    ("glue/rte", "validation"): 277, ("glue/mnli", "validation_matched"): 9815,
    ("glue/mnli_matched", "validation"): 9815,
    ("super_glue/boolq", "validation"): 3270,
    ("super_glue/cb", "train"): 250, ("super_glue/cb", "validation"): 56,
    ("super_glue/copa", "train"): 400, ("super_glue/copa", "validation"): 100,
    ("super_glue/multirc", "train"): 27243,
    ("super_glue/multirc", "validation"): 4848,
    ("super_glue/rte", "train"): 2490, ("super_glue/rte", "validation"): 277,
    ("super_glue/wic", "train"): 5428, ("super_glue/wic", "validation"): 638,
    ("super_glue/wsc.fixed", "train"): 554,
    ("super_glue/wsc.fixed", "validation"): 104,
    ("sci_tail", "test"): 2126,
}


def test_every_shared_file_reads_with_official_counts(shared_data):
  found = set()
  for name, raw in sources.RAW_DATASETS.items():
    for split in raw.splits:
      try:
        path, _ = sources.local_file(raw, split, str(shared_data))
      except FileNotFoundError:
        continue
      found.add((name, split))
      index = sources.raw_index(raw, split, sources.SourceConfig(
          "local", str(shared_data)), want_labels=raw.label_key is not None)
      assert index.size == _SHARED_COUNTS[(name, split)], (name, split, path)
      if index.labels is not None:
        assert set(index.labels.tolist()) <= set(range(3)) or name.endswith(
            "stsb")
  assert found == set(_SHARED_COUNTS)


def test_shared_mrpc_prefers_glue_source_recipe(shared_data):
  path, _ = sources.local_file(sources.raw_dataset("glue/mrpc"), "train",
                               str(shared_data))
  assert path.endswith("source/msr_paraphrase_train.txt")


def test_local_read_matches_tfds_features(shared_data):
  exs = _read("super_glue/wsc.fixed", "validation", shared_data)
  assert set(exs[0]) == set(sources.raw_dataset("super_glue/wsc.fixed")
                            .signature)
  assert exs[0]["span2_text"] == b"him" and exs[0]["label"] == 0


# ------------------------------------------------------------------- TFDS


def test_tfds_source_on_mock_data():
  raw = sources.raw_dataset("super_glue/multirc")
  with tfds.testing.mock_data(num_examples=6):
    exs = list(tfds.as_numpy(sources.read_raw(raw, "validation")))
    index = sources.raw_index(raw, "validation")
  assert len(exs) == 6 and index.size == 6
  assert sorted(index.canon_of_stream.tolist()) == list(range(6))
  keys = [e["idx"]["answer"] for e in exs]
  assert [keys[i] for i in index.canon_of_stream.argsort()] == sorted(keys)


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
  raw = sources.raw_dataset("glue/rte")
  cfg = sources.SourceConfig("tfds", None, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="mpt_rte.*not prepared.*local"):
    sources.read_raw(raw, "validation", cfg, task="mpt_rte")
