"""SeqIO tasks in the Lester et al. (2021) / T5 style: GLUE and SuperGLUE.

Naming grammar (as google-research/prompt-tuning, minus `_examples`)::

    [taskless_]glue_<name>_v200          name: cola sst2 mrpc qqp stsb mnli
                                               mnli_matched mnli_mismatched
                                               qnli rte
    [taskless_]super_glue_<name>_v102    name: boolq cb copa multirc record
                                               rte wic
    [taskless_]super_glue_wsc_v102_simple_{train,eval}

Inputs are T5's text formats: the task name, then `key: value` pairs
(`"rte sentence1: ... sentence2: ..."`, keys sorted as T5 does unless T5
fixes an order), word targets (`"entailment"`, `"not_entailment"`; STS-B
`"3.4"` on the 0.2 grid; COPA `"choice1"`/`"choice2"`; ReCoRD the answer
entity, one example per answer; WSC the referent noun, trained on correct
referents only). `taskless_` variants drop the leading task word (the
prompt-tuning `remove_first_text_token`), the format Lester et al. tune
prompts on. Splits are the official ones (TFDS `glue:2.0.0` = `v200`,
`super_glue:1.0.2` = `v102`): train and validation (MNLI:
`validation_matched`, `validation_mismatched`); mixtures
`[taskless_]glue_mnli_and_dev_v200` and
`[taskless_]super_glue_wsc_and_dev_v102_simple` are in
`ptuning_jax.data.seqio.mixtures`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import seqio

from ptuning_jax.data import metrics
from ptuning_jax.data.seqio import postprocessors as post
from ptuning_jax.data.seqio import preprocessors as prep
from ptuning_jax.data.seqio import splits

GLUE_VERSION = "v200"
SUPER_GLUE_VERSION = "v102"
TASKLESS = "taskless_"
_NLI2 = ("entailment", "not_entailment")
_BOOL = ("False", "True")


@dataclasses.dataclass(frozen=True)
class LesterTask:
  """One T5-format task.

  Attributes:
    name: the task name without `taskless_`.
    raw: `sources.RAW_DATASETS` key.
    splits: task split -> raw split.
    text: text preprocessors (raw example -> T5 format).
    labels: class-label strings, or None.
    postprocess_fn: for predictions and targets.
    metric_fns: T5's metrics for the task.
  """
  name: str
  raw: str
  splits: dict[str, str]
  text: list
  labels: Optional[tuple[str, ...]]
  postprocess_fn: Callable[..., Any]
  metric_fns: Sequence[Callable[..., dict]]


_TRAIN_VAL = {"train": "train", "validation": "validation"}


def _glue_like(name, raw, bench, labels, features, metric_fns,
               task_splits=None, markup=False, postprocess_fn=None):
  text = [functools.partial(prep.t5_glue, benchmark_name=bench,
                            label_names=labels, feature_names=features,
                            markup=markup)]
  postprocess_fn = postprocess_fn or functools.partial(
      post.string_label_to_class_id, label_classes=labels)
  return LesterTask(name, raw, task_splits or dict(_TRAIN_VAL), text, labels,
                    postprocess_fn, metric_fns)


def _glue_tasks() -> list[LesterTask]:
  v, acc = GLUE_VERSION, [metrics.accuracy]
  f1_acc = [metrics.f1_binary, metrics.accuracy]
  nli3 = ("entailment", "neutral", "contradiction")
  mnli_features = ("hypothesis", "premise")
  out = [
      _glue_like(f"glue_cola_{v}", "glue/cola", "cola",
                 ("unacceptable", "acceptable"), ("sentence",),
                 [metrics.matthews_corrcoef]),
      _glue_like(f"glue_sst2_{v}", "glue/sst2", "sst2",
                 ("negative", "positive"), ("sentence",), acc),
      _glue_like(f"glue_mrpc_{v}", "glue/mrpc", "mrpc",
                 ("not_equivalent", "equivalent"),
                 ("sentence1", "sentence2"), f1_acc),
      _glue_like(f"glue_qqp_{v}", "glue/qqp", "qqp",
                 ("not_duplicate", "duplicate"), ("question1", "question2"),
                 f1_acc),
      LesterTask(f"glue_stsb_{v}", "glue/stsb", dict(_TRAIN_VAL),
                 [prep.t5_stsb], tuple(f"{i / 5:.1f}" for i in range(26)),
                 post.string_to_float,
                 [metrics.pearson_corrcoef, metrics.spearman_corrcoef]),
      _glue_like(f"glue_mnli_{v}", "glue/mnli", "mnli", nli3, mnli_features,
                 acc, {"train": "train",
                       "validation_matched": "validation_matched",
                       "validation_mismatched": "validation_mismatched"}),
      _glue_like(f"glue_mnli_matched_{v}", "glue/mnli_matched", "mnli", nli3,
                 mnli_features, acc, {"validation": "validation"}),
      _glue_like(f"glue_mnli_mismatched_{v}", "glue/mnli_mismatched", "mnli",
                 nli3, mnli_features, acc, {"validation": "validation"}),
      _glue_like(f"glue_qnli_{v}", "glue/qnli", "qnli", _NLI2,
                 ("question", "sentence"), acc),
      _glue_like(f"glue_rte_{v}", "glue/rte", "rte", _NLI2,
                 ("sentence1", "sentence2"), acc),
  ]
  return out


def _super_glue_tasks() -> list[LesterTask]:
  v, acc = SUPER_GLUE_VERSION, [metrics.accuracy]
  return [
      _glue_like(f"super_glue_boolq_{v}", "super_glue/boolq", "boolq", _BOOL,
                 ("passage", "question"), acc),
      _glue_like(f"super_glue_cb_{v}", "super_glue/cb", "cb",
                 ("entailment", "contradiction", "neutral"),
                 ("hypothesis", "premise"),
                 [metrics.mean_multiclass_f1(3), metrics.accuracy]),
      _glue_like(f"super_glue_copa_{v}", "super_glue/copa", "copa",
                 ("choice1", "choice2"),
                 ("choice1", "choice2", "premise", "question"), acc),
      _glue_like(f"super_glue_multirc_{v}", "super_glue/multirc", "multirc",
                 _BOOL, ("question", "answer", "paragraph"),
                 [metrics.multirc_f1, metrics.multirc_exact_match],
                 markup=True, postprocess_fn=functools.partial(
                     post.multirc, label_classes=_BOOL)),
      LesterTask(f"super_glue_record_{v}", "super_glue/record",
                 dict(_TRAIN_VAL), [prep.record], None, post.record,
                 [metrics.record]),
      _glue_like(f"super_glue_rte_{v}", "super_glue/rte", "rte", _NLI2,
                 ("hypothesis", "premise"), acc),
      _glue_like(f"super_glue_wic_{v}", "super_glue/wic", "wic", _BOOL,
                 ("sentence1", "sentence2", "word"), acc),
      LesterTask(f"super_glue_wsc_{v}_simple_train", "super_glue/wsc.fixed",
                 {"train": "train"},
                 [functools.partial(prep.t5_wsc_simple,
                                    correct_referent_only=True)],
                 None, None, []),
      LesterTask(f"super_glue_wsc_{v}_simple_eval", "super_glue/wsc.fixed",
                 {"validation": "validation"},
                 [functools.partial(prep.t5_wsc_simple,
                                    correct_referent_only=False)],
                 None, post.wsc_simple, [metrics.accuracy]),
  ]


TASK_SPECS: dict[str, LesterTask] = {
    t.name: t for t in _glue_tasks() + _super_glue_tasks()}


# Official split sizes (raw input examples), for display only.
_SIZES = {
    "glue_cola": (8551, 1043), "glue_sst2": (67349, 872),
    "glue_mrpc": (3668, 408), "glue_qqp": (363849, 40430),
    "glue_stsb": (5749, 1500), "glue_qnli": (104743, 5463),
    "glue_rte": (2490, 277), "super_glue_boolq": (9427, 3270),
    "super_glue_cb": (250, 56), "super_glue_copa": (400, 100),
    "super_glue_multirc": (27243, 4848), "super_glue_record": (100730, 10000),
    "super_glue_rte": (2490, 277), "super_glue_wic": (5428, 638),
}
_OTHER_SIZES = {
    "glue_mnli": {"train": 392702, "validation_matched": 9815,
                  "validation_mismatched": 9832},
    "glue_mnli_matched": {"validation": 9815},
    "glue_mnli_mismatched": {"validation": 9832},
    "super_glue_wsc": {"train": 554, "validation": 104},
}


def reference_sizes(name: str) -> Optional[dict[str, int]]:
  """Official split sizes of a Lester task (raw examples), or None."""
  base = name.removeprefix(TASKLESS)
  if base not in TASK_SPECS:
    return None
  stem = base.rsplit(f"_{GLUE_VERSION}", 1)[0].split(
      f"_{SUPER_GLUE_VERSION}")[0]
  if stem in _SIZES:
    return dict(zip(("train", "validation"), _SIZES[stem]))
  sizes = _OTHER_SIZES.get(stem)
  return None if sizes is None else {
      s: n for s, n in sizes.items() if s in TASK_SPECS[base].splits}


def _register(spec: LesterTask, taskless: bool) -> str:
  name = (TASKLESS if taskless else "") + spec.name
  if name in seqio.TaskRegistry.names():
    return name
  text = list(spec.text) + ([prep.remove_first_text_token] if taskless else [])
  protocol = splits.Protocol(splits.OFFICIAL, spec.splits)
  seqio.TaskRegistry.add(
      name,
      source=splits.ProtocolSource(spec.raw, protocol, None, name),
      preprocessors=text + prep.tokenize_steps(),
      output_features=prep.output_features(),
      postprocess_fn=spec.postprocess_fn,
      metric_fns=list(spec.metric_fns))
  if spec.labels is not None:
    post.register_labels(name, spec.labels)
  return name


def task_names(taskless: Optional[bool] = None) -> list[str]:
  """Registered Lester-style task names (optionally only (non-)taskless)."""
  variants = (False, True) if taskless is None else (taskless,)
  return [(TASKLESS if t else "") + n for n in TASK_SPECS for t in variants]


for _spec in TASK_SPECS.values():
  for _taskless in (False, True):
    _register(_spec, _taskless)
