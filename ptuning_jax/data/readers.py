"""Official benchmark files -> examples, without TensorFlow.

The one reader of the official distribution formats, shared by the seqio tasks
(`ptuning_jax.data.seqio.sources`, which wraps these readers in tf.data) and the
BERT-family classification path (`ptuning_jax.data.glue`). A reader is a
function `path -> Iterator[dict]`; its examples have the features of the
corresponding TFDS builder (names, label indices, `idx`), so both paths see
the same examples with the same labels.

Formats: GLUE TSV (tab-separated, no quoting; CoLA without a header line;
MRPC's UTF-8 BOM dropped, also from GLUE's MRPC source files), SuperGLUE JSONL,
derived NLI JSONL (`premise`/`hypothesis`/`label`), gzipped JSONL (MRQA),
SQuAD JSON, WinoGrande JSONL, Yelp polarity CSV, SciTail (`snli_format` JSONL
and `tsv_format`), PAWS-Wiki TSV. Every reader reads in file order.

Bad input raises `DataFileError` whose message starts with `path:line:`
(SQuAD, a single JSON document, names the record's position instead).
"""
from __future__ import annotations

import csv
import gzip
import json
import logging
import os
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

Reader = Callable[[str], Iterator[dict]]


class DataFileError(ValueError):
  """A malformed data file; the message starts with `path:line:`."""


# ------------------------------------------------------------------ formats


def lines(path: str) -> Iterator[tuple[int, str]]:
  """(1-based line number, line without its newline) of a text file.

  A `.gz` file is decompressed; a UTF-8 byte order mark is dropped.
  """
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8-sig") as f:
    for i, line in enumerate(f, 1):
      yield i, line.rstrip("\r\n")


def jsonl(path: str) -> Iterator[tuple[int, dict]]:
  """(line number, object) of each non-blank line of a JSONL file."""
  for i, line in lines(path):
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


# ------------------------------------------------------------------ datasets

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
    rows = lines(path)
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
    dev_ids = {tuple(line.split("\t")[:2]) for _, line in lines(ids_path)
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
    for i, row in jsonl(path):
      try:
        yield from _super_glue_examples(config, row)
      except (KeyError, IndexError, TypeError) as e:
        raise DataFileError(f"{path}:{i}: not a SuperGLUE {config} record "
                            f"({type(e).__name__}: {e}).") from e
  return read


def nli_jsonl(label_names: Sequence[str]) -> Reader:
  """Derived NLI JSONL: `premise`, `hypothesis`, `label` (name or index)."""
  def read(path):
    for n, (i, row) in enumerate(jsonl(path)):
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
  for i, line in lines(path):
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
  for i, row in jsonl(path):
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
  for i, row in jsonl(path):
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
  for i, line in lines(path):
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
  rows = jsonl(path)
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
