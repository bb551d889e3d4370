"""Raw data sources: TFDS by default, or local files in official formats.

Every benchmark task reads one raw dataset (`RAW_DATASETS`, e.g.
`glue/rte`) through `splits.ProtocolSource`, a seqio `DataSource` that applies
the task's split protocol and optional k-shot sampling to the raw splits read
here. Which backend reads the raw splits is decided lazily, when a dataset is
read, from (first match wins):

1. the explicit configuration, `configure(SourceConfig(...))` or
   `configure(source=..., data_dir=...)`; a run's gin file sets it with one
   setting that switches every task (`SeqioData` applies it when built):

       from __gin__ import dynamic_registration
       from ptuning_jax.data.seqio import seqio_data
       from ptuning_jax.data.seqio import sources
       seqio_data.SeqioData.source = @sources.SourceConfig()
       sources.SourceConfig.source = 'local'
       sources.SourceConfig.data_dir = '/path/to/data'

2. the environment: `PTUNING_JAX_DATA_SOURCE` (`tfds`|`local`),
   `PTUNING_JAX_DATA_DIR`, `PTUNING_JAX_TFDS_DATA_DIR`;
3. the default, TFDS (prepared datasets; TFDS' own data dir).

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
(`premise`/`hypothesis`/`label`) of `shared/data`. The files are read by
`ptuning_jax.data.readers` (TensorFlow-free, shared with `data.glue`), whose
readers produce the same features (names, dtypes, label indices, `idx`) as
the TFDS builders.

Order: local files are read in file order, which is the order of the
official releases and of the Hugging Face datasets the DePT protocol shuffles,
so split membership matches DePT. TFDS stores examples in hashed order; where
a dataset has an `idx` (GLUE, SuperGLUE) its canonical order is recovered by
sorting on it, elsewhere TFDS order is used (documented divergence). Within a
split the output keeps the raw order; the protocol decides membership only.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ptuning_jax.data import readers
from ptuning_jax.data.readers import Reader


SOURCES = ("tfds", "local")
SOURCE_ENV = "PTUNING_JAX_DATA_SOURCE"
DATA_DIR_ENV = "PTUNING_JAX_DATA_DIR"
TFDS_DATA_DIR_ENV = "PTUNING_JAX_TFDS_DATA_DIR"

# --------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class SourceConfig:
  """Where raw data comes from.

  Attributes:
    source: "tfds" (prepared TFDS datasets) or "local" (official files).
    data_dir: root of the local files (`source="local"`).
    tfds_data_dir: TFDS data dir (default: TFDS' own).
  """
  source: str = "tfds"
  data_dir: Optional[str] = None
  tfds_data_dir: Optional[str] = None

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"data source {self.source!r} is not one of {SOURCES}.")
    if self.source == "local" and not self.data_dir:
      raise ValueError(
          "the local data source needs a data directory: "
          "sources.SourceConfig.data_dir (gin), "
          "sources.configure(source='local', data_dir=...) or "
          f"${DATA_DIR_ENV}.")


_EXPLICIT: Optional[SourceConfig] = None


def configure(source: Union[str, SourceConfig] = "tfds",
              data_dir: Optional[str] = None,
              tfds_data_dir: Optional[str] = None) -> SourceConfig:
  """Switches every benchmark task to a source, from the next read on.

  Args:
    source: a `SourceConfig` (then no other argument), or "tfds" / "local".
    data_dir: root of the local files (`source="local"`).
    tfds_data_dir: TFDS data dir (default: TFDS' own).

  Returns:
    the configuration now in force.
  """
  global _EXPLICIT
  if isinstance(source, SourceConfig):
    if data_dir is not None or tfds_data_dir is not None:
      raise ValueError("sources.configure: give a SourceConfig or its fields, "
                       "not both.")
    _EXPLICIT = source
  else:
    _EXPLICIT = SourceConfig(source, data_dir, tfds_data_dir)
  return _EXPLICIT


def reset():
  """Forgets the explicit configuration (the environment applies again)."""
  global _EXPLICIT
  _EXPLICIT = None


def current_config() -> SourceConfig:
  """The configuration in force now (see the module docstring)."""
  if _EXPLICIT is not None:
    return _EXPLICIT
  env_source = os.environ.get(SOURCE_ENV)
  data_dir = os.environ.get(DATA_DIR_ENV) or None
  return SourceConfig(env_source or "tfds", data_dir,
                      os.environ.get(TFDS_DATA_DIR_ENV) or None)


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
  tsv = readers.glue_tsv
  mnli_tsv = tsv({"premise": "sentence1", "hypothesis": "sentence2"},
                 "gold_label", nli3)
  mnli_json = readers.nli_jsonl(nli3)

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
                        readers.mrpc_source("train")), ("train.tsv", mrpc)],
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
    reader = readers.super_glue_jsonl(config)
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
      {"train": [LocalFile("squad/train-v1.1.json", readers.squad_json)],
       "validation": [LocalFile("squad/dev-v1.1.json", readers.squad_json)]},
      None, None)]
  for config, stem in _MRQA_FILES.items():
    out.append(RawDataset(
        f"mrqa/{config}", f"mrqa/{config}:1.0.0",
        {"subset": STR, "context": STR, "qid": STR, "question": STR,
         "answers": STRS},
        {"train": [LocalFile(f"mrqa/train/{stem}.jsonl.gz", readers.mrqa_jsonl_gz)],
         "validation": [LocalFile(f"mrqa/dev/{stem}.jsonl.gz",
                                  readers.mrqa_jsonl_gz)]},
        None, None))
  wino = readers.winogrande_jsonl
  out.append(RawDataset(
      "winogrande", "winogrande:1.2.0",
      {"sentence": STR, "option1": STR, "option2": STR, "label": I64},
      {"train_xl": [LocalFile("other/winogrande/train_xl.jsonl", wino)],
       "validation": [LocalFile("other/winogrande/dev.jsonl", wino)]}, None))
  out.append(RawDataset(
      "yelp_polarity_reviews", "yelp_polarity_reviews:0.2.0",
      {"text": STR, "label": I64},
      {"train": [LocalFile("other/yelp_polarity/train.csv", readers.yelp_csv)],
       "test": [LocalFile("other/yelp_polarity/test.csv", readers.yelp_csv)]},
      None))
  sci_json = readers.nli_jsonl(("entailment", "not_entailment"))
  out.append(RawDataset(
      "sci_tail", "sci_tail:1.0.0",
      {"premise": STR, "hypothesis": STR, "label": I64},
      {split: [LocalFile(f"other/scitail/scitail_1.0_{f}.txt",
                         readers.scitail_snli_jsonl),
               LocalFile(f"other/scitail/scitail_1.0_{f}.tsv", readers.scitail_tsv),
               LocalFile(f"other/scitail/{f}.jsonl", sci_json)]
       for split, f in (("train", "train"), ("validation", "dev"),
                        ("test", "test"))}, None))
  out.append(RawDataset(
      "paws_wiki/labeled_final_tokenized",
      "paws_wiki/labeled_final_tokenized:1.1.0",
      {"sentence1": STR, "sentence2": STR, "label": I64},
      {split: [LocalFile(f"other/paws_wiki/{f}.tsv", readers.paws_tsv)]
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
        f"({e}); build it with `tfds build` or switch to local files: "
        "seqio_data.SeqioData.source = @sources.SourceConfig() with "
        "sources.SourceConfig.source = 'local' (gin), "
        "sources.configure(source='local', data_dir=...) or "
        f"${SOURCE_ENV}=local.") from e


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
