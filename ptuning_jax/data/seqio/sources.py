"""Raw data sources: TFDS by default, or local files in official formats.

Every benchmark task reads one raw dataset (`RAW_DATASETS`, e.g.
`glue/rte`) through `splits.ProtocolSource`, a seqio `DataSource` that applies
the task's split protocol and optional k-shot sampling to the raw splits read
here. Which backend reads the raw splits is decided lazily, when a dataset is
read, from (first match wins):

1. `configure(source=..., data_dir=...)` called in Python;
2. gin bindings of `configure` (one gin setting switches every task):

       from __gin__ import dynamic_registration
       from ptuning_jax.data.seqio import sources
       sources.configure.source = 'local'
       sources.configure.data_dir = '/path/to/data'

3. the environment: `PTUNING_JAX_DATA_SOURCE` (`tfds`|`local`),
   `PTUNING_JAX_DATA_DIR`, `PTUNING_JAX_TFDS_DATA_DIR`;
4. the default, TFDS (prepared datasets; TFDS' own data dir).

Local files use the official distribution formats and names below the data
directory (see `RAW_DATASETS` for each split's candidate files): GLUE TSV
(`glue/<task>/{train,dev}.tsv`, CoLA without header, MRPC also from its GLUE
source files), SuperGLUE JSONL (`super_glue/<task>/{train,val}.jsonl`), MRQA
`mrqa/{train,dev}/<Name>.jsonl.gz`, SQuAD `squad/{train,dev}-v1.1.json`,
WinoGrande `other/winogrande/{train_xl,dev}.jsonl`, Yelp
`other/yelp_polarity/{train,test}.csv`, SciTail
`other/scitail/scitail_1.0_{train,dev,test}.txt` (`snli_format`, what DePT
reads) or `.tsv` (`tsv_format`, what TFDS reads), PAWS
`other/paws_wiki/{train,dev,test}.tsv`, plus the derived NLI JSONL files
(`premise`/`hypothesis`/`label`) of `shared/data`. Local readers produce the
same features (names, dtypes, label indices, `idx`) as the TFDS builders.

Order: local files are read in file order, which is the order of the
official releases and of the Hugging Face datasets the DePT protocol shuffles,
so split membership matches DePT. TFDS stores examples in hashed order; where
a dataset has an `idx` (GLUE, SuperGLUE) its canonical order is recovered by
sorting on it, elsewhere TFDS order is used (documented divergence). Within a
split the output keeps the raw order; the protocol decides membership only.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import logging
import os
import threading
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import gin
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


SOURCES = ("tfds", "local")
SOURCE_ENV = "PTUNING_JAX_DATA_SOURCE"
DATA_DIR_ENV = "PTUNING_JAX_DATA_DIR"
TFDS_DATA_DIR_ENV = "PTUNING_JAX_TFDS_DATA_DIR"

# --------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class SourceConfig:
  """Where raw data comes from: `source` is "tfds" or "local"."""
  source: str = "tfds"
  data_dir: Optional[str] = None
  tfds_data_dir: Optional[str] = None

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"data source {self.source!r} is not one of {SOURCES}.")
    if self.source == "local" and not self.data_dir:
      raise ValueError(
          "the local data source needs a data directory: "
          "sources.configure(source='local', data_dir=...) or "
          f"${DATA_DIR_ENV}.")


_EXPLICIT: Optional[SourceConfig] = None


def configure(source: str = "tfds", data_dir: Optional[str] = None,
              tfds_data_dir: Optional[str] = None) -> SourceConfig:
  """Switches every benchmark task to `source` (bindable in gin).

  Args:
    source: "tfds" (prepared TFDS datasets) or "local" (official files).
    data_dir: root of the local files (`source="local"`).
    tfds_data_dir: TFDS data dir (default: TFDS' own).

  Returns:
    the new configuration, used from the next dataset read on.
  """
  global _EXPLICIT
  _EXPLICIT = SourceConfig(source, data_dir, tfds_data_dir)
  return _EXPLICIT


def reset():
  """Forgets a `configure` call (gin bindings and env vars apply again)."""
  global _EXPLICIT
  _EXPLICIT = None


def _gin_bindings() -> dict[str, Any]:
  try:
    return dict(gin.get_bindings(configure))
  except ValueError:  # `configure` is not registered with gin.
    return {}


def current_config() -> SourceConfig:
  """The configuration in force now (see the module docstring)."""
  if _EXPLICIT is not None:
    return _EXPLICIT
  bound = _gin_bindings()
  if bound:
    unknown = set(bound) - {"source", "data_dir", "tfds_data_dir"}
    if unknown:
      raise ValueError(
          f"unknown gin parameters of sources.configure: {unknown}")
    return SourceConfig(**bound)
  env_source = os.environ.get(SOURCE_ENV)
  data_dir = os.environ.get(DATA_DIR_ENV) or None
  return SourceConfig(env_source or "tfds", data_dir,
                      os.environ.get(TFDS_DATA_DIR_ENV) or None)


# ------------------------------------------------------- local-format readers

Reader = Callable[[str], Iterator[dict]]


class DataFileError(ValueError):
  """A malformed local data file; the message starts with `path:line:`."""


def _lines(path: str) -> Iterator[tuple[int, str]]:
  """(1-based line number, line without its newline); a BOM is dropped."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8-sig") as f:
    for i, line in enumerate(f, 1):
      yield i, line.rstrip("\r\n")


def _json_lines(path: str) -> Iterator[tuple[int, dict]]:
  for i, line in _lines(path):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataFileError(f"{path}:{i}: invalid JSON ({e.msg}).") from e
    if not isinstance(row, dict):
      raise DataFileError(f"{path}:{i}: expected a JSON object, got "
                          f"{type(row).__name__}.")
    yield i, row


def _label_value(value: str, names, label_type, where: str):
  if names and value in names:
    return names.index(value)
  try:
    return label_type(value)
  except ValueError:
    expected = f"one of {list(names)} or " if names else ""
    raise DataFileError(f"{where}: label {value!r} is not {expected}a "
                        f"{label_type.__name__}.") from None


def glue_tsv(features: Mapping[str, Any], label_column: Any,
             label_names: Optional[Sequence[str]], header: bool = True,
             label_type: type = int, drop_short_rows: bool = False) -> Reader:
  """GLUE TSV (tab-separated, no quoting), as TFDS' `glue` builder reads it.

  Args:
    features: feature name -> column name (header) or index (no header).
    label_column: the label column; absent from the header = unlabelled (-1).
    label_names: class names in label-index order, or None for numeric labels.
    header: whether the first line names the columns (CoLA has none).
    label_type: int (classes) or float (STS-B).
    drop_short_rows: skip rows with missing fields, as TFDS does for QQP's
      train file (logged); otherwise such a row is an error.

  Returns:
    a reader yielding `{feature: str, "label": ..., "idx": row number}`.
  """
  def read(path):
    rows = _lines(path)
    if header:
      _, head = next(rows, (1, ""))
      names = head.split("\t")
      missing = [c for c in features.values() if c not in names]
      if missing or not head:
        raise DataFileError(
            f"{path}:1: header {names} lacks columns {missing}.")
      cols = {f: names.index(c) for f, c in features.items()}
      label_col = names.index(label_column) if label_column in names else None
      width = len(names)
    else:
      cols, label_col = dict(features), label_column
      width = max(list(cols.values()) + [label_col]) + 1
    dropped = []
    for n, (i, line) in enumerate(r for r in rows if r[1]):
      fields = line.split("\t")
      if len(fields) != width:
        if drop_short_rows and len(fields) < width:
          dropped.append(i)
          continue
        raise DataFileError(f"{path}:{i}: expected {width} tab-separated "
                            f"fields, got {len(fields)}.")
      ex = {f: fields[c] for f, c in cols.items()}
      ex["label"] = (-1 if label_col is None else _label_value(
          fields[label_col], label_names, label_type, f"{path}:{i}"))
      ex["idx"] = n
      yield ex
    if dropped:
      logging.warning("%s: dropped %d rows with missing fields (as TFDS "
                      "does), lines %s", path, len(dropped), dropped[:10])
  return read


def mrpc_source(split: str) -> Reader:
  """MRPC from GLUE's sources (`msr_paraphrase_train.txt` + `dev_ids.tsv`).

  This is how GLUE and TFDS build MRPC: rows listed in `dev_ids.tsv` form the
  dev split, the others train; `idx` is the row number in the source file.
  """
  def read(path):
    ids_path = os.path.join(os.path.dirname(path), "dev_ids.tsv")
    if not os.path.exists(ids_path):
      raise FileNotFoundError(f"{path}: MRPC needs {ids_path} beside it.")
    dev_ids = {tuple(line.split("\t")[:2]) for _, line in _lines(ids_path)
               if line}
    reader = glue_tsv({"id1": "#1 ID", "id2": "#2 ID", "sentence1":
                       "#1 String", "sentence2": "#2 String"}, "Quality", None)
    for ex in reader(path):
      if ((ex.pop("id1"), ex.pop("id2")) in dev_ids) == (split == "dev"):
        yield ex
  return read


_SUPER_GLUE_LABELS = {
    "boolq": ("False", "True"), "multirc": ("False", "True"),
    "wic": ("False", "True"), "wsc.fixed": ("False", "True"),
    "cb": ("entailment", "contradiction", "neutral"),
    "rte": ("entailment", "not_entailment"), "copa": ("choice1", "choice2"),
}
_SUPER_GLUE_FIELDS = {
    "boolq": ("question", "passage"), "cb": ("premise", "hypothesis"),
    "copa": ("premise", "choice1", "choice2", "question"),
    "rte": ("premise", "hypothesis"),
    "wic": ("word", "sentence1", "sentence2", "start1", "start2", "end1",
            "end2"),
    "wsc.fixed": ("text", "span1_index", "span2_index", "span1_text",
                  "span2_text"),
}


def _super_glue_label(config: str, row: dict):
  """TFDS `_cast_label` + ClassLabel: JSON label -> class index (-1: none)."""
  if "label" not in row:
    return -1
  label = row["label"]
  if config == "multirc":  # 0/1 in the JSONL; TFDS casts to bool.
    label = bool(label)
  if config == "copa":
    label = "choice2" if label else "choice1"
  elif isinstance(label, bool):
    label = "True" if label else "False"
  names = _SUPER_GLUE_LABELS[config]
  if label not in names:
    raise KeyError(f"label {label!r} is not one of {names}")
  return names.index(label)


def _fix_wsc_spans(ex: dict) -> dict:
  """TFDS/HF `wsc.fixed`: makes span texts substrings of the text."""
  for k in ("span1", "span2"):
    text = ex[k + "_text"]
    if text in ex["text"] or text in ("Kamenev and Zinoviev",
                                      "Kamenev, Zinoviev, and Stalin"):
      continue
    if "theyscold" in text:  # TFDS discards the replaced text; so do we.
      ex["span2_index"] = 10
    first_word = ex["text"].split()[ex[k + "_index"]]
    text = (text[0].lower() if first_word[0].islower() else
            text[0].upper()) + text[1:]
    ex[k + "_text"] = text.rstrip(".").replace("\n", " ")
  return ex


def _super_glue_examples(config: str, row: dict) -> Iterator[dict]:
  if config == "multirc":
    paragraph = row["passage"]
    for q in paragraph["questions"]:
      for a in q["answers"]:
        yield {"paragraph": paragraph["text"], "question": q["question"],
               "answer": a["text"], "label": _super_glue_label(config, a),
               "idx": {"paragraph": row["idx"], "question": q["idx"],
                       "answer": a["idx"]}}
  elif config == "record":
    passage = row["passage"]
    text = passage["text"]
    entities = sorted({text[e["start"]:e["end"] + 1]
                       for e in passage["entities"]})
    for qa in row["qas"]:
      yield {"passage": text, "query": qa["query"], "entities": entities,
             "answers": sorted({a["text"] for a in qa.get("answers", [])}),
             "idx": {"passage": row["idx"], "query": qa["idx"]}}
  else:
    if config == "wsc.fixed":
      row = {**row, **row["target"]}
    ex = {f: row[f] for f in _SUPER_GLUE_FIELDS[config]}
    if config == "wsc.fixed":
      ex = _fix_wsc_spans(ex)
    ex["idx"] = row["idx"]
    ex["label"] = _super_glue_label(config, row)
    yield ex


def super_glue_jsonl(config: str) -> Reader:
  """SuperGLUE JSONL (`train.jsonl`/`val.jsonl`) as TFDS' `super_glue`."""
  def read(path):
    for i, row in _json_lines(path):
      try:
        yield from _super_glue_examples(config, row)
      except (KeyError, IndexError, TypeError) as e:
        raise DataFileError(f"{path}:{i}: not a SuperGLUE {config} record "
                            f"({type(e).__name__}: {e}).") from e
  return read


def nli_jsonl(label_names: Sequence[str]) -> Reader:
  """Derived NLI JSONL: `premise`, `hypothesis`, `label` (name or index)."""
  def read(path):
    for n, (i, row) in enumerate(_json_lines(path)):
      try:
        label = row["label"]
        yield {"premise": row["premise"], "hypothesis": row["hypothesis"],
               "label": (label_names.index(label) if isinstance(label, str)
                         else int(label)), "idx": n}
      except (KeyError, ValueError) as e:
        raise DataFileError(f"{path}:{i}: not a premise/hypothesis/label "
                            f"record with label in {list(label_names)} "
                            f"({type(e).__name__}: {e}).") from e
  return read


def scitail_tsv(path: str) -> Iterator[dict]:
  """SciTail `tsv_format` (premise, hypothesis, entails|neutral), as TFDS."""
  names = ("entails", "neutral")
  for i, line in _lines(path):
    if not line:
      continue
    fields = next(csv.reader([line], delimiter="\t"))
    if len(fields) != 3:
      raise DataFileError(f"{path}:{i}: expected 3 tab-separated fields, got "
                          f"{len(fields)}.")
    yield {"premise": fields[0], "hypothesis": fields[1],
           "label": _label_value(fields[2], names, int, f"{path}:{i}")}


def scitail_snli_jsonl(path: str) -> Iterator[dict]:
  """SciTail `snli_format` JSONL (sentence1, sentence2, gold_label), DePT's."""
  names = ("entailment", "neutral")
  for i, row in _json_lines(path):
    if "sentence1" not in row or "sentence2" not in row:
      raise DataFileError(f"{path}:{i}: expected sentence1/sentence2/"
                          "gold_label (SciTail snli_format).")
    yield {"premise": row["sentence1"], "hypothesis": row["sentence2"],
           "label": _label_value(row.get("gold_label", ""), names, int,
                                 f"{path}:{i}")}


def paws_tsv(path: str) -> Iterator[dict]:
  """PAWS-Wiki `{train,dev,test}.tsv` (id, sentence1, sentence2, label)."""
  with open(path, encoding="utf-8") as f:
    reader = csv.DictReader(f, delimiter="\t")
    for row in reader:
      try:
        yield {"sentence1": row["sentence1"], "sentence2": row["sentence2"],
               "label": int(row["label"])}
      except (KeyError, TypeError, ValueError) as e:
        raise DataFileError(f"{path}:{reader.line_num}: malformed PAWS row "
                            f"({type(e).__name__}: {e}).") from e


def winogrande_jsonl(path: str) -> Iterator[dict]:
  """WinoGrande 1.1 JSONL; label = answer - 1 (-1 where unlabelled)."""
  for i, row in _json_lines(path):
    try:
      answer = row.get("answer", "")
      yield {"sentence": row["sentence"], "option1": row["option1"],
             "option2": row["option2"],
             "label": int(answer) - 1 if answer != "" else -1}
    except (KeyError, ValueError) as e:
      raise DataFileError(f"{path}:{i}: malformed WinoGrande record "
                          f"({type(e).__name__}: {e}).") from e


def yelp_csv(path: str) -> Iterator[dict]:
  """Yelp polarity CSV, parsed like TFDS/HF (`"1","text"` per line)."""
  for i, line in _lines(path):
    if not line:
      continue
    if len(line) < 6 or line[0] != '"' or line[1] not in "12" or (
        line[2:5] != '","' or line[-1] != '"'):
      raise DataFileError(f'{path}:{i}: expected a line "1|2","text".')
    yield {"text": line[5:-1].strip(), "label": int(line[1]) - 1}


def squad_json(path: str) -> Iterator[dict]:
  """SQuAD v1.1 JSON (`data` -> paragraphs -> qas), one example per qa."""
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise DataFileError(f"{path}: not a SQuAD JSON file ({e}).") from e
  for a, article in enumerate(data):
    for p, para in enumerate(article.get("paragraphs", [])):
      for q, qa in enumerate(para.get("qas", [])):
        try:
          yield {"id": qa["id"], "title": article.get("title", ""),
                 "context": para["context"], "question": qa["question"],
                 "answers": {"text": [x["text"] for x in qa["answers"]],
                             "answer_start": [x["answer_start"]
                                              for x in qa["answers"]]}}
        except (KeyError, TypeError) as e:
          raise DataFileError(f"{path}: data[{a}].paragraphs[{p}].qas[{q}]: "
                              f"missing {e}.") from e


def mrqa_jsonl_gz(path: str) -> Iterator[dict]:
  """MRQA 2019 `<Name>.jsonl.gz`: header line, then one paragraph per line."""
  rows = _json_lines(path)
  i, head = next(rows, (1, {}))
  subset = head.get("header", {}).get("dataset") if isinstance(
      head.get("header"), dict) else None
  if subset is None:
    raise DataFileError(f"{path}:{i}: expected the MRQA header line.")
  for i, para in rows:
    try:
      context = para["context"].strip()
      for qa in para["qas"]:
        yield {"subset": subset, "context": context, "qid": qa["qid"],
               "question": qa["question"].strip(),
               "answers": list(qa["answers"])}
    except (KeyError, AttributeError, TypeError) as e:
      raise DataFileError(f"{path}:{i}: malformed MRQA paragraph "
                          f"({type(e).__name__}: {e}).") from e


# ---------------------------------------------------------------- raw datasets

STR = tf.TensorSpec((), tf.string)
STRS = tf.TensorSpec((None,), tf.string)
I32 = tf.TensorSpec((), tf.int32)
I64 = tf.TensorSpec((), tf.int64)
F32 = tf.TensorSpec((), tf.float32)


@dataclasses.dataclass(frozen=True)
class LocalFile:
  """One candidate local file of a raw split: a relative path and a reader."""
  path: str
  reader: Reader


@dataclasses.dataclass(frozen=True)
class RawDataset:
  """A raw dataset: its TFDS name and its local files.

  Attributes:
    name: short name, e.g. "glue/rte".
    tfds_name: TFDS name with version, e.g. "glue/rte:2.0.0".
    signature: the example structure (TFDS feature names and dtypes).
    local: raw split -> candidate local files (the first existing one is read).
    position_key: "/"-joined path of the example field whose sort order is
      the official file order in TFDS (None: use TFDS order).
    label_key: the class label field (None for generative datasets).
  """
  name: str
  tfds_name: str
  signature: Mapping[str, Any]
  local: Mapping[str, Sequence[LocalFile]]
  position_key: Optional[str] = "idx"
  label_key: Optional[str] = "label"

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.local)


def _glue(name, version, signature, files, reader):
  """A GLUE raw dataset; `files`: split -> file name or [(file, reader)]."""
  folder = "mnli" if name.startswith("mnli") else name
  local = {}
  for split, cands in files.items():
    cands = cands if isinstance(cands, list) else [(cands, reader)]
    local[split] = [LocalFile(f"glue/{folder}/{f}", r) for f, r in cands]
  return RawDataset(f"glue/{name}", f"glue/{name}:{version}", signature, local)


def _pair(a, b, label=I64):
  return {a: STR, b: STR, "label": label, "idx": I32}


def _build_glue() -> list[RawDataset]:
  v = "2.0.0"
  nli3 = ("entailment", "neutral", "contradiction")
  nli2 = ("entailment", "not_entailment")
  tsv = glue_tsv
  mnli_tsv = tsv({"premise": "sentence1", "hypothesis": "sentence2"},
                 "gold_label", nli3)
  mnli_json = nli_jsonl(nli3)

  def mnli_files(kind):
    return [(f"dev_{kind}.tsv", mnli_tsv), (f"dev_{kind}.jsonl", mnli_json)]

  mrpc = tsv({"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality",
             None)
  return [
      _glue("cola", v, {"sentence": STR, "label": I64, "idx": I32},
            {"train": "train.tsv", "validation": "dev.tsv"},
            tsv({"sentence": 3}, 1, None, header=False)),
      _glue("sst2", v, {"sentence": STR, "label": I64, "idx": I32},
            {"train": "train.tsv", "validation": "dev.tsv"},
            tsv({"sentence": "sentence"}, "label", None)),
      _glue("mrpc", v, _pair("sentence1", "sentence2"),
            {"train": [("source/msr_paraphrase_train.txt",
                        mrpc_source("train")), ("train.tsv", mrpc)],
             "validation": "dev.tsv"}, mrpc),
      _glue("qqp", v, _pair("question1", "question2"),
            {"train": "train.tsv", "validation": "dev.tsv"},
            tsv({"question1": "question1", "question2": "question2"},
                "is_duplicate", None, drop_short_rows=True)),
      _glue("stsb", v, _pair("sentence1", "sentence2", F32),
            {"train": "train.tsv", "validation": "dev.tsv"},
            tsv({"sentence1": "sentence1", "sentence2": "sentence2"}, "score",
                None, label_type=float)),
      _glue("mnli", v, _pair("premise", "hypothesis"),
            {"train": "train.tsv",
             "validation_matched": mnli_files("matched"),
             "validation_mismatched": mnli_files("mismatched")}, mnli_tsv),
      _glue("mnli_matched", v, _pair("premise", "hypothesis"),
            {"validation": mnli_files("matched")}, mnli_tsv),
      _glue("mnli_mismatched", v, _pair("premise", "hypothesis"),
            {"validation": mnli_files("mismatched")}, mnli_tsv),
      _glue("qnli", v, _pair("question", "sentence"),
            {"train": "train.tsv", "validation": "dev.tsv"},
            tsv({"question": "question", "sentence": "sentence"}, "label",
                nli2)),
      _glue("rte", v, _pair("sentence1", "sentence2"),
            {"train": "train.tsv", "validation": "dev.tsv"},
            tsv({"sentence1": "sentence1", "sentence2": "sentence2"}, "label",
                nli2)),
  ]


_SUPER_GLUE_SIGNATURES = {
    "boolq": {"question": STR, "passage": STR, "label": I64, "idx": I32},
    "cb": {"premise": STR, "hypothesis": STR, "label": I64, "idx": I32},
    "copa": {"premise": STR, "choice1": STR, "choice2": STR, "question": STR,
             "label": I64, "idx": I32},
    "multirc": {"paragraph": STR, "question": STR, "answer": STR,
                "label": I64, "idx": {"paragraph": I32, "question": I32,
                                      "answer": I32}},
    "record": {"passage": STR, "query": STR, "entities": STRS, "answers": STRS,
               "idx": {"passage": I32, "query": I32}},
    "rte": {"premise": STR, "hypothesis": STR, "label": I64, "idx": I32},
    "wic": {"word": STR, "sentence1": STR, "sentence2": STR, "start1": I32,
            "start2": I32, "end1": I32, "end2": I32, "label": I64,
            "idx": I32},
    "wsc.fixed": {"text": STR, "span1_index": I32, "span2_index": I32,
                  "span1_text": STR, "span2_text": STR, "label": I64,
                  "idx": I32},
}
_SUPER_GLUE_KEYS = {"multirc": "idx/answer", "record": "idx/query"}


def _build_super_glue() -> list[RawDataset]:
  out = []
  for config, signature in _SUPER_GLUE_SIGNATURES.items():
    folder = config.split(".")[0]
    reader = super_glue_jsonl(config)
    local = {"train": [LocalFile(f"super_glue/{folder}/train.jsonl", reader)],
             "validation": [LocalFile(f"super_glue/{folder}/val.jsonl",
                                      reader)]}
    out.append(RawDataset(
        f"super_glue/{config}", f"super_glue/{config}:1.0.2", signature, local,
        _SUPER_GLUE_KEYS.get(config, "idx"),
        None if config == "record" else "label"))
  return out


_MRQA_FILES = {"natural_questions": "NaturalQuestionsShort",
               "hotpot_qa": "HotpotQA", "search_qa": "SearchQA",
               "news_qa": "NewsQA"}


def _build_others() -> list[RawDataset]:
  out = [RawDataset(
      "squad/v1.1", "squad/v1.1:3.0.0",
      {"id": STR, "title": STR, "context": STR, "question": STR,
       "answers": {"text": STRS, "answer_start": tf.TensorSpec((None,),
                                                               tf.int32)}},
      {"train": [LocalFile("squad/train-v1.1.json", squad_json)],
       "validation": [LocalFile("squad/dev-v1.1.json", squad_json)]},
      None, None)]
  for config, stem in _MRQA_FILES.items():
    out.append(RawDataset(
        f"mrqa/{config}", f"mrqa/{config}:1.0.0",
        {"subset": STR, "context": STR, "qid": STR, "question": STR,
         "answers": STRS},
        {"train": [LocalFile(f"mrqa/train/{stem}.jsonl.gz", mrqa_jsonl_gz)],
         "validation": [LocalFile(f"mrqa/dev/{stem}.jsonl.gz",
                                  mrqa_jsonl_gz)]},
        None, None))
  wino = winogrande_jsonl
  out.append(RawDataset(
      "winogrande", "winogrande:1.2.0",
      {"sentence": STR, "option1": STR, "option2": STR, "label": I64},
      {"train_xl": [LocalFile("other/winogrande/train_xl.jsonl", wino)],
       "validation": [LocalFile("other/winogrande/dev.jsonl", wino)]}, None))
  out.append(RawDataset(
      "yelp_polarity_reviews", "yelp_polarity_reviews:0.2.0",
      {"text": STR, "label": I64},
      {"train": [LocalFile("other/yelp_polarity/train.csv", yelp_csv)],
       "test": [LocalFile("other/yelp_polarity/test.csv", yelp_csv)]},
      None))
  sci_json = nli_jsonl(("entailment", "not_entailment"))
  out.append(RawDataset(
      "sci_tail", "sci_tail:1.0.0",
      {"premise": STR, "hypothesis": STR, "label": I64},
      {split: [LocalFile(f"other/scitail/scitail_1.0_{f}.txt",
                         scitail_snli_jsonl),
               LocalFile(f"other/scitail/scitail_1.0_{f}.tsv", scitail_tsv),
               LocalFile(f"other/scitail/{f}.jsonl", sci_json)]
       for split, f in (("train", "train"), ("validation", "dev"),
                        ("test", "test"))}, None))
  out.append(RawDataset(
      "paws_wiki/labeled_final_tokenized",
      "paws_wiki/labeled_final_tokenized:1.1.0",
      {"sentence1": STR, "sentence2": STR, "label": I64},
      {split: [LocalFile(f"other/paws_wiki/{f}.tsv", paws_tsv)]
       for split, f in (("train", "train"), ("validation", "dev"),
                        ("test", "test"))}, None))
  return out


RAW_DATASETS: dict[str, RawDataset] = {
    r.name: r for r in _build_glue() + _build_super_glue() + _build_others()}


def raw_dataset(name: str) -> RawDataset:
  if name not in RAW_DATASETS:
    raise KeyError(f"unknown raw dataset {name!r}; known: "
                   f"{sorted(RAW_DATASETS)}")
  return RAW_DATASETS[name]


# ------------------------------------------------------------------- reading


def local_file(raw: RawDataset, split: str, data_dir: str,
               task: str = "") -> tuple[str, Reader]:
  """The first existing candidate file of `raw`'s `split` under `data_dir`."""
  who = f"task {task!r}" if task else f"raw dataset {raw.name!r}"
  if split not in raw.local:
    raise ValueError(f"{who}: raw dataset {raw.name!r} has no split {split!r} "
                     f"(has {list(raw.local)}).")
  paths = []
  for cand in raw.local[split]:
    path = os.path.join(data_dir, cand.path)
    if os.path.exists(path):
      return path, cand.reader
    paths.append(path)
  raise FileNotFoundError(
      f"{who}: no local file for split {split!r} of {raw.name!r}; looked for "
      + " or ".join(paths))


def _generator_dataset(path: str, reader: Reader,
                       signature: Mapping[str, Any]) -> tf.data.Dataset:
  def gen():
    for ex in reader(path):
      yield {k: ex[k] for k in signature}
  return tf.data.Dataset.from_generator(gen, output_signature=dict(signature))


def _tfds_dataset(raw: RawDataset, split: str, cfg: SourceConfig,
                  task: str) -> tf.data.Dataset:
  builder = tfds.builder(raw.tfds_name, data_dir=cfg.tfds_data_dir)
  try:
    return builder.as_dataset(
        split=split, shuffle_files=False,
        read_config=tfds.ReadConfig(interleave_cycle_length=1))
  except AssertionError as e:  # TFDS' "dataset not prepared" error.
    raise FileNotFoundError(
        f"task {task!r}: TFDS dataset {raw.tfds_name} is not prepared "
        f"({e}); build it with `tfds build` or switch to local files with "
        "sources.configure(source='local', data_dir=...).") from e


def read_raw(raw: RawDataset, split: str, cfg: Optional[SourceConfig] = None,
             task: str = "") -> tf.data.Dataset:
  """The raw split as a tf.data.Dataset of `raw.signature` examples."""
  cfg = cfg or current_config()
  if cfg.source == "local":
    path, reader = local_file(raw, split, cfg.data_dir, task)
    return _generator_dataset(path, reader, raw.signature)
  return _tfds_dataset(raw, split, cfg, task)


def _field(ex: Mapping[str, Any], key: str):
  for part in key.split("/"):
    ex = ex[part]
  return ex


@dataclasses.dataclass(frozen=True)
class RawIndex:
  """What the protocol needs of one raw split.

  Attributes:
    size: N, examples in the split.
    canon_of_stream: [N] canonical position of each streamed example, or None
      when stream order is canonical.
    labels: [N] labels in canonical order (only when requested).
  """
  size: int
  canon_of_stream: Optional[np.ndarray]
  labels: Optional[np.ndarray] = None


_INDEX_CACHE: dict[tuple, RawIndex] = {}
_INDEX_LOCK = threading.Lock()


def _tfds_columns(raw: RawDataset, split: str, cfg: SourceConfig, task: str,
                  fields: Sequence[str]) -> list[np.ndarray]:
  """Columns `fields` ("/"-paths) of a TFDS split, in stream order."""
  ds = _tfds_dataset(raw, split, cfg, task)
  ds = ds.map(lambda ex: tuple(_field(ex, f) for f in fields),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  chunks = list(tfds.as_numpy(ds.batch(8192)))
  if not chunks:
    return [np.zeros((0,), np.int64) for _ in fields]
  return [np.concatenate([c[i] for c in chunks]) for i in range(len(fields))]


def _scan(raw: RawDataset, split: str, cfg: SourceConfig, task: str,
          key: Optional[str], want_labels: bool) -> RawIndex:
  """One pass over a raw split collecting its size, order keys and labels."""
  fields = ([key] if key else []) + ([raw.label_key] if want_labels else [])
  if cfg.source == "local":
    path, reader = local_file(raw, split, cfg.data_dir, task)
    rows = [tuple(_field(ex, f) for f in fields) for ex in reader(path)]
    n = len(rows)
    columns = [np.asarray([r[i] for r in rows]) for i in range(len(fields))]
  elif fields:
    columns = _tfds_columns(raw, split, cfg, task, fields)
    n = len(columns[0])
  else:
    return RawIndex(_tfds_size(raw, split, cfg, task), None)
  canon = None
  if key:
    order = np.argsort(columns[0].astype(np.int64), kind="stable")
    canon = np.empty(n, dtype=np.int64)
    canon[order] = np.arange(n)
  labels = None
  if want_labels:
    labels = columns[-1]
    if canon is not None:
      labels = labels[order]
  return RawIndex(n, canon, labels)


def _tfds_size(raw: RawDataset, split: str, cfg: SourceConfig,
               task: str) -> int:
  """Examples in a TFDS split: from its metadata, else counted."""
  builder = tfds.builder(raw.tfds_name, data_dir=cfg.tfds_data_dir)
  info = builder.info.splits.get(split) if builder.info.splits else None
  if info is not None and info.num_examples:
    return int(info.num_examples)
  ds = _tfds_dataset(raw, split, cfg, task)
  return int(ds.reduce(np.int64(0), lambda n, _: n + 1).numpy())


def raw_index(raw: RawDataset, split: str, cfg: Optional[SourceConfig] = None,
              task: str = "", want_labels: bool = False,
              need_order: bool = True) -> RawIndex:
  """Size, canonical order and (optionally) labels of a raw split (cached).

  Args:
    raw: the raw dataset.
    split: its raw split.
    cfg: the source configuration (default: the current one).
    task: task name for error messages.
    want_labels: also collect the labels (canonical order).
    need_order: compute `canon_of_stream` (TFDS with a position key); False
      when only the size is needed.

  Returns:
    the `RawIndex`.
  """
  cfg = cfg or current_config()
  key = raw.position_key if (cfg.source == "tfds" and need_order) else None
  cache_key = (cfg, raw.name, split)
  with _INDEX_LOCK:
    cached = _INDEX_CACHE.get(cache_key)
  if cached is not None and (cached.labels is not None or not want_labels) and (
      cached.canon_of_stream is not None or key is None):
    return cached
  if want_labels and raw.label_key is None:
    raise ValueError(f"task {task!r}: raw dataset {raw.name} has no labels "
                     "(k-shot sampling needs a classification dataset).")
  if cached is not None and cached.canon_of_stream is not None:
    key = raw.position_key
  index = _scan(raw, split, cfg, task, key, want_labels)
  with _INDEX_LOCK:
    _INDEX_CACHE[cache_key] = index
  return index


def clear_caches():
  with _INDEX_LOCK:
    _INDEX_CACHE.clear()


def select(ds: tf.data.Dataset, stream_mask: np.ndarray) -> tf.data.Dataset:
  """Keeps the examples whose stream position is set in `stream_mask` [N]."""
  mask = tf.constant(stream_mask, dtype=tf.bool)
  n = len(stream_mask)

  def keep(i, ex):
    del ex
    tf.debugging.assert_less(i, tf.constant(n, tf.int64),
                             message="raw split grew since it was indexed")
    return tf.gather(mask, i)

  return ds.enumerate().filter(keep).map(lambda i, ex: ex)
