"""Text-to-text formatting of raw benchmark examples (tf.data preprocessors).

Two families:

* MPT/DePT (`mpt_*`): field-name templates joined by single spaces
  (`"premise: {p} hypothesis: {h}"`), no task prefix, label-index targets
  (`"0"`, `"1"`, ...), as DePT's `src/tasks.py` (ATTEMPT lineage). QA inputs
  are punctuation-padded with DePT's `pad_punctuation`.
* Lester/T5 (`t5_*`): T5's GLUE/SuperGLUE text formats (task name first,
  `key: value` pairs, word labels) from `t5.data.preprocessors`, plus
  `remove_first_text_token` for the `taskless` variants (prompt-tuning).

Both keep what metrics need next to `inputs`/`targets` (`idx/*`, `answers`).
`output_features()` gives the T5 SentencePiece features (EOS on inputs and
targets) with the vocabulary path resolved at first use, not at import.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from ptuning_jax.data.seqio import vocabularies

AUTOTUNE = tf.data.AUTOTUNE

# DePT `pad_punctuation`: pad everything but `_`, whitespace, numbers,
# letters and marks (Python `regex` semantics; Unicode whitespace spelt out
# because RE2's \s is ASCII-only).
_WS = r"\t\n\v\f\r \x{85}\p{Z}"
_PUNCT = r"([^_" + _WS + r"\p{N}\p{L}\p{M}])"


class _EnvSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """T5 SentencePiece whose path is read from the environment at first use.

  Tasks are registered at import, often before a test or the CLI has set
  `PTUNING_JAX_SPM_PATH`; this vocabulary resolves the path (and then keeps
  it) when it is first compared, pickled or loaded.
  """

  def __init__(self, extra_ids: int = vocabularies.T5_EXTRA_IDS):
    super().__init__(None, extra_ids)

  def _resolve(self):
    if self._sentencepiece_model_file is None:
      self._sentencepiece_model_file = vocabularies.default_spm_path()

  def _model_context(self):
    self._resolve()
    return super()._model_context()

  def __getstate__(self):
    self._resolve()
    return super().__getstate__()

  @property
  def sentencepiece_model_file(self) -> str:
    self._resolve()
    return self._sentencepiece_model_file


_VOCABULARY = _EnvSentencePieceVocabulary()


def output_features() -> dict[str, seqio.Feature]:
  """inputs/targets with the default T5 vocabulary, EOS appended to both."""
  return {
      "inputs": seqio.Feature(_VOCABULARY, add_eos=True, required=False),
      "targets": seqio.Feature(_VOCABULARY, add_eos=True),
  }


# ------------------------------------------------------------------ helpers


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
  """DePT's `pad_punctuation`: spaces around punctuation, runs collapsed."""
  text = tf.strings.regex_replace(text, _PUNCT, r" \1 ")
  return tf.strings.regex_replace(text, "[" + _WS + "]+", " ")


def _join(parts: Sequence) -> tf.Tensor:
  return tf.strings.join(list(parts), separator=" ")


def _label_name(label: tf.Tensor, names: Sequence[str]) -> tf.Tensor:
  """names[label], or "<unk>" for label -1 (unlabelled)."""
  return tf.cond(tf.equal(label, -1), lambda: tf.constant("<unk>"),
                 lambda: tf.gather(tf.constant(list(names)), label))


def _index_string(label: tf.Tensor) -> tf.Tensor:
  return tf.strings.as_string(tf.cast(label, tf.int64))


def _flat_idx(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """`idx` (scalar or dict) as flat `idx` / `idx/<key>` features."""
  if "idx" not in x:
    return {}
  if isinstance(x["idx"], Mapping):
    return {f"idx/{k}": v for k, v in x["idx"].items()}
  return {"idx": x["idx"]}


def _remove_markup(text: tf.Tensor) -> tf.Tensor:
  text = tf.strings.regex_replace(text, "<br>", " ")
  return tf.strings.regex_replace(text, "<(/)?b>", "")


def _mark_span(text, span_str, span_idx, mark):
  """T5/DePT `_mark_span`: wraps the span at word `span_idx` in `mark`."""
  pattern = tf.strings.join(
      [r"^((?:\S+\s){", tf.strings.as_string(span_idx), r"})(", span_str,
       ")"])
  return tf.strings.regex_replace(text, pattern, r"\1{0} \2 {0}".format(mark))


def _wsc_marked_text(x):
  """Noun span wrapped in `*`, pronoun span in `#` (T5 `wsc`)."""
  text = _mark_span(x["text"], x["span1_text"], x["span1_index"], "*")
  span2_index = x["span2_index"] + 2 * tf.cast(
      x["span1_index"] < x["span2_index"], x["span2_index"].dtype)
  return _mark_span(text, x["span2_text"], span2_index, "#")


def _record_passage(passage: tf.Tensor) -> tf.Tensor:
  passage = tf.strings.regex_replace(
      passage, r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
  return tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")


# ---------------------------------------------------------------- MPT/DePT


@seqio.map_over_dataset
def mpt_fields(x, fields: Sequence[tuple[str, str]],
               markup: bool = False) -> dict[str, tf.Tensor]:
  """`"<name>: <x[key]> ..."` -> label index (DePT's classification format).

  Args:
    x: a raw example.
    fields: (template name, raw key) pairs in template order.
    markup: strip MultiRC's `<br>`/`<b>` markup from every field.

  Returns:
    {"inputs", "targets", idx features}.
  """
  parts = []
  for name, key in fields:
    value = _remove_markup(x[key]) if markup else x[key]
    parts += [f"{name}:", value]
  return {"inputs": _join(parts), "targets": _index_string(x["label"]),
          **_flat_idx(x)}


@seqio.map_over_dataset
def mpt_stsb(x, compat: bool = False) -> dict[str, tf.Tensor]:
  """STS-B: score on the 0.2 grid ("3.4"); `compat`: DePT's 0.1 rounding.

  DePT's `round_stsb_target` computes `np.round((label * 5) / 5, 1)`, which
  rounds to one decimal, not to the 0.2 grid its label list assumes.
  """
  label = x["label"]
  if compat:  # float64 like numpy on the HF label: (x * 5) / 5, rint(y * 10).
    y = tf.cast(label, tf.float64) * 5 / 5
    grid = tf.round(y * 10) / 10
  else:  # T5 `stsb`, float32.
    grid = tf.round(label * 5) / 5
  inputs = _join(["sentence1:", x["sentence1"], "sentence2:", x["sentence2"]])
  return {"inputs": inputs,
          "targets": tf.strings.as_string(grid, precision=1),
          **_flat_idx(x)}


@seqio.map_over_dataset
def mpt_wsc(x) -> dict[str, tf.Tensor]:
  """WSC: `"text: <text with * noun * and # pronoun #>"` -> label index."""
  return {"inputs": _join(["text:", _wsc_marked_text(x)]),
          "targets": _index_string(x["label"]), **_flat_idx(x)}


@seqio.map_over_dataset
def mpt_winogrande(x, compat: bool = False) -> dict[str, tf.Tensor]:
  """WinoGrande: `"sentence: s option0: o1 option1: o2"` -> answer - 1.

  `compat` reproduces the ATTEMPT/DePT template, which shows option1 twice
  (`option0: o1 option1: o1`), so option2 never reaches the model.
  """
  second = x["option1"] if compat else x["option2"]
  inputs = _join(["sentence:", x["sentence"], "option0:", x["option1"],
                  "option1:", second])
  return {"inputs": inputs, "targets": _index_string(x["label"])}


@seqio.map_over_dataset
def mpt_qa(x, answers_key: str = "answers") -> dict[str, tf.Tensor]:
  """QA: `"question: q context: c"` (punctuation padded) -> first answer.

  Args:
    x: a raw MRQA (`answers` [A] strings) or SQuAD (`answers/text`) example.
    answers_key: "answers" (MRQA) or "answers/text" (SQuAD).

  Returns:
    {"inputs", "targets", "answers": [A] all padded gold answers}.
  """
  answers = x
  for part in answers_key.split("/"):
    answers = answers[part]
  answers = pad_punctuation(answers)
  inputs = _join(["question:", pad_punctuation(x["question"]), "context:",
                  pad_punctuation(x["context"])])
  return {"inputs": inputs, "targets": answers[0], "answers": answers}


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD: one example per answer (T5 `record`; DePT likewise).

  `"record query: q entities: e1, e2 passage: p"` -> an answer (`<unk>` when
  there is none); `answers` keeps all of them and `idx/passage`, `idx/query`
  identify the question for the deduplicating metric.
  """
  def per_answer(x):
    n = tf.size(x["answers"])
    targets = tf.cond(n > 0, lambda: x["answers"],
                      lambda: tf.constant(["<unk>"]))
    inputs = _join(["record query:", x["query"], "entities:",
                    tf.strings.reduce_join(x["entities"], separator=", "),
                    "passage:", _record_passage(x["passage"])])
    m = tf.size(targets)

    def repeat(t):
      return tf.broadcast_to(t, tf.concat([[m], tf.shape(t)], axis=0))

    out = {"inputs": repeat(inputs), "targets": targets,
           "answers": repeat(x["answers"])}
    out.update({k: repeat(v) for k, v in _flat_idx(x).items()})
    return out

  return dataset.map(per_answer, num_parallel_calls=AUTOTUNE).unbatch()


# ----------------------------------------------------------------- Lester/T5


@seqio.map_over_dataset
def t5_glue(x, benchmark_name: str, label_names: Sequence[str],
            feature_names: Sequence[str],
            markup: bool = False) -> dict[str, tf.Tensor]:
  """T5 `glue`: `"<benchmark> key1: v1 key2: v2"` -> label word.

  Args:
    x: a raw example.
    benchmark_name: the leading task word (e.g. "rte", "mnli").
    label_names: class names in label-index order.
    feature_names: keys in order (T5 sorts TFDS feature names unless given).
    markup: remove MultiRC's `<br>`/`<b>` markup from the joined input.

  Returns:
    {"inputs", "targets", idx features}.
  """
  parts = [benchmark_name]
  for key in feature_names:
    parts += [f"{key}:", x[key]]
  joined = _join(parts)
  if markup:
    joined = _remove_markup(joined)
  return {"inputs": joined, "targets": _label_name(x["label"], label_names),
          **_flat_idx(x)}


@seqio.map_over_dataset
def t5_stsb(x) -> dict[str, tf.Tensor]:
  """T5 `stsb`: `"stsb sentence1: a sentence2: b"` -> "3.4" (0.2 grid)."""
  inputs = _join(["stsb sentence1:", x["sentence1"], "sentence2:",
                  x["sentence2"]])
  return {"inputs": inputs,
          "targets": tf.strings.as_string(tf.round(x["label"] * 5) / 5,
                                          precision=1), **_flat_idx(x)}


_WSC_SPECIAL = (
    ('The boy continued to whip the pony , and eventually the pony threw him '
     'over. John laughed out quite loud. "Good for him," he said. ',
     'The boy continued to whip the pony , and eventually the pony threw him '
     'over. John laughed out quite loud. "Good for X ," he said.'),
    ('When they had eventually calmed down a bit , and had gotten home, Mr. '
     'Farley put the magic pebble in an iron safe . Some day they might want '
     'to use it , but really for now, what more could they wish for?',
     'When they had eventually calmed down a bit , and had gotten home, Mr. '
     'Farley put the magic pebble in an iron safe . Some day they might want '
     'to use X , but really for now, what more could they wish for?'),
)


def _wsc_inputs(x) -> tf.Tensor:
  """T5 `_wsc_inputs`: the text with the pronoun (word span2_index) -> X.

  As in T5, the word at `span2_index` must be `span2_text` (two known texts
  are special-cased); anything else is an error naming the example.
  """
  def blank():
    words = tf.strings.split(x["text"], sep=" ")
    i = tf.cast(x["span2_index"], tf.int32)
    n = tf.size(words)
    ok = tf.logical_and(
        tf.logical_and(i > 0, i < n),
        tf.equal(words[tf.clip_by_value(i, 0, n - 1)], x["span2_text"]))
    checks = [tf.debugging.Assert(ok, [
        "WSC: span2_text is not the word at span2_index; idx, text, "
        "span2_text, span2_index:", x["idx"], x["text"], x["span2_text"], i])]
    with tf.control_dependencies(checks):
      return _join([tf.strings.reduce_join(words[:i], separator=" "), "X",
                    tf.strings.reduce_join(words[i + 1:], separator=" ")])

  out = None
  for text, fixed in reversed(_WSC_SPECIAL):
    inner = out if out is not None else blank
    out = (lambda t=text, f=fixed, inner=inner: tf.cond(
        tf.equal(x["text"], t), lambda: tf.constant(f), inner))
  return out()


def t5_wsc_simple(dataset: tf.data.Dataset, correct_referent_only: bool,
                  label: str = "wsc:") -> tf.data.Dataset:
  """T5 `wsc_simple`: `"wsc: text with *pronoun*"` -> the noun span.

  Training keeps only examples whose noun is the referent
  (`correct_referent_only`); evaluation checks whether the predicted referent
  matches (`postprocessors.wsc_simple`).
  """
  def fn(x):
    inputs = tf.strings.regex_replace(_wsc_inputs(x), " X ",
                                      tf.strings.join([" *", x["span2_text"],
                                                       "* "]))
    return {"inputs": _join([label, inputs]), "targets": x["span1_text"],
            "label": x["label"], "idx": x["idx"]}

  if correct_referent_only:
    dataset = dataset.filter(lambda x: tf.equal(x["label"], 1))
  return dataset.map(fn, num_parallel_calls=AUTOTUNE)


@seqio.map_over_dataset
def remove_first_text_token(x, key: str = "inputs"):
  """prompt-tuning's `taskless` step: drops the first space-delimited word."""
  x = dict(x)
  x[key] = tf.strings.regex_replace(x[key], r"^[^ ]* ", "",
                                    replace_global=False)
  return x


def tokenize_steps() -> list:
  """The token-level steps every task ends with (T5/seqio convention)."""
  return [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim]

