"""SeqIO tasks of the 23-dataset MPT/DePT benchmark.

Naming grammar::

    mpt_<dataset>[_k<K>[_s<SEED>]][_compat]

* `<dataset>`: the 21 targets -- GLUE `mnli qqp qnli sst2 stsb mrpc rte cola`,
  SuperGLUE `multirc boolq wic wsc cb`, MRQA 2019 `nq hotpotqa searchqa
  newsqa`, others `winogrande yelp scitail paws` -- and the sources `squad`,
  `record`.
* `_k<K>`: a few-shot train split of K examples per class drawn with seed
  SEED (default 42) from the protocol's train split; validation and test are
  the full protocol splits. Classification datasets only.
* `_compat`: DePT's code as released, quirks included -- WinoGrande's
  template shows option1 twice (`option0: o1 option1: o1`), STS-B targets are
  rounded to 0.1 (`np.round(x, 1)`) instead of the 0.2 grid, and `_k<K>`
  means K examples in total, drawn with DePT's sampler. Registered only where
  it differs from the default.

Formats follow DePT `src/tasks.py`: `"premise: p hypothesis: h"`-style inputs
without a task prefix, label-index targets (`"0"`, `"1"`, `"2"`), STS-B as
`"3.4"`, QA as `"question: q context: c"` (punctuation padded) -> first
answer. Splits follow the protocol of `ptuning_jax.data.seqio.splits` (small:
validation halves; large: 1,000 held-out train examples, official dev as
test; MNLI: mismatched/matched; PAWS: official; Yelp train capped at 100k).
QA metrics take the max over all gold answers (DePT scores the first only).

Pre-registered: every `mpt_<dataset>`, the compat variants, and
`_k{4,16,32}[_compat]` for BoolQ, CB and SciTail (MPT/DePT's few-shot
datasets; not `mpt_cb_k32`, as CB's train split has only 16 `neutral`
examples); `ensure_registered(name)` registers any other valid name, and
reading a k-shot split whose classes are too small is an error.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Optional, Sequence

import numpy as np
import seqio

from ptuning_jax.data import metrics
from ptuning_jax.data.seqio import postprocessors as post
from ptuning_jax.data.seqio import preprocessors as prep
from ptuning_jax.data.seqio import splits

PREFIX = "mpt_"
GLUE = ("mnli", "qqp", "qnli", "sst2", "stsb", "mrpc", "rte", "cola")
SUPER_GLUE = ("multirc", "boolq", "wic", "wsc", "cb")
MRQA = ("nq", "hotpotqa", "searchqa", "newsqa")
OTHERS = ("winogrande", "yelp", "scitail", "paws")
TARGETS = GLUE + SUPER_GLUE + MRQA + OTHERS
SOURCES = ("mnli", "qnli", "qqp", "sst2", "squad", "record")
DATASETS = TARGETS + ("squad", "record")
FEW_SHOT_DATASETS = ("boolq", "cb", "scitail")
# CB's train split has 16 `neutral` examples: 32 per class cannot be drawn
# (`mpt_cb_k32_compat`, 32 in total, can).
_IMPOSSIBLE_PER_CLASS = frozenset({("cb", 32)})
DEFAULT_FEW_SHOT_SEED = 42

_SMALL = {"train": "train", "validation": "validation"}
_LARGE = {"train": "train", "test": "validation"}
STSB_GRID = tuple(f"{i / 5:.1f}" for i in range(26))
STSB_COMPAT_GRID = tuple(f"{i / 10:.1f}" for i in range(51))


@dataclasses.dataclass(frozen=True)
class MptDataset:
  """One benchmark dataset.

  Attributes:
    name: grammar name (`cb`).
    raw: `sources.RAW_DATASETS` key.
    protocol: the split protocol.
    text: compat -> text preprocessors (raw example -> inputs/targets).
    labels: compat -> class-label strings, or None (generative).
    postprocess_fn: for predictions and targets.
    metric_fns: metrics, the model-selection one first (DePT order).
    compat_differs: whether `_compat` changes anything.
    sizes: reference protocol split sizes (DePT logs and official releases;
      for display and mixing rates only).
  """
  name: str
  raw: str
  protocol: splits.Protocol
  text: Callable[[bool], list]
  labels: Callable[[bool], Optional[tuple[str, ...]]]
  postprocess_fn: Callable[..., Any]
  metric_fns: Sequence[Callable[..., dict]]
  compat_differs: bool = False
  sizes: Optional[dict[str, int]] = None


def _fields(*pairs, markup=False):
  fields = [(p, p) if isinstance(p, str) else p for p in pairs]
  return lambda compat: [functools.partial(prep.mpt_fields, fields=fields,
                                           markup=markup)]


def _labels(n):
  return lambda compat: tuple(str(i) for i in range(n))


def _classes(n):
  return functools.partial(post.string_label_to_class_id,
                           label_classes=tuple(str(i) for i in range(n)))


def _small(train, val):
  return {"train": train, "validation": val // 2, "test": val - val // 2}


def _large(train_after_holdout, test, cap=None):
  train = train_after_holdout if cap is None else min(cap, train_after_holdout)
  return {"train": train, "validation": splits.LARGE_HOLDOUT, "test": test}


def _classification(name, raw, protocol, fields, n, metric_fns, sizes,
                    markup=False):
  return MptDataset(name, raw, protocol, _fields(*fields, markup=markup),
                    _labels(n), _classes(n), metric_fns, sizes=sizes)


def _qa(name, raw, answers_key="answers", sizes=None):
  def text(compat):
    del compat
    return [functools.partial(prep.mpt_qa, answers_key=answers_key)]
  return MptDataset(name, raw, splits.Protocol(splits.LARGE, _LARGE), text,
                    lambda compat: None, post.qa, [metrics.squad],
                    sizes=sizes)


_SMALL_PROTOCOL = splits.Protocol(splits.SMALL, _SMALL)
_LARGE_PROTOCOL = splits.Protocol(splits.LARGE, _LARGE)
_ACC = [metrics.accuracy]
_F1_ACC = [metrics.f1_binary, metrics.accuracy]


def _glue_specs() -> list[MptDataset]:
  small, large, c = _SMALL_PROTOCOL, _LARGE_PROTOCOL, _classification
  return [
      MptDataset(
          "mnli", "glue/mnli", splits.Protocol(splits.OFFICIAL, {
              "train": "train", "validation": "validation_mismatched",
              "test": "validation_matched"}),
          _fields("premise", "hypothesis"), _labels(3), _classes(3), _ACC,
          sizes={"train": 392702, "validation": 9832, "test": 9815}),
      c("qqp", "glue/qqp", large, ("question1", "question2"), 2, _F1_ACC,
        _large(362846, 40430)),
      c("qnli", "glue/qnli", large, ("question", "sentence"), 2, _ACC,
        _large(103743, 5463)),
      c("sst2", "glue/sst2", large, ("sentence",), 2, _ACC,
        _large(66349, 872)),
      MptDataset(
          "stsb", "glue/stsb", small,
          lambda compat: [functools.partial(prep.mpt_stsb, compat=compat)],
          lambda compat: STSB_COMPAT_GRID if compat else STSB_GRID,
          post.string_to_float,
          [metrics.pearson_corrcoef, metrics.spearman_corrcoef],
          compat_differs=True, sizes=_small(5749, 1500)),
      c("mrpc", "glue/mrpc", small, ("sentence1", "sentence2"), 2, _F1_ACC,
        _small(3668, 408)),
      c("rte", "glue/rte", small, ("sentence1", "sentence2"), 2, _ACC,
        _small(2490, 277)),
      c("cola", "glue/cola", small, ("sentence",), 2,
        [metrics.matthews_corrcoef], _small(8551, 1043)),
  ]


def _super_glue_specs() -> list[MptDataset]:
  small, c = _SMALL_PROTOCOL, _classification
  return [
      MptDataset(
          "multirc", "super_glue/multirc", small,
          _fields("question", "answer", "paragraph", markup=True), _labels(2),
          functools.partial(post.multirc, label_classes=("0", "1")),
          [metrics.multirc_f1, metrics.multirc_exact_match],
          sizes=_small(27243, 4848)),
      c("boolq", "super_glue/boolq", small, ("question", "passage"), 2, _ACC,
        _small(9427, 3270)),
      c("wic", "super_glue/wic", small, ("sentence1", "sentence2", "word"), 2,
        _ACC, _small(5428, 638)),
      MptDataset("wsc", "super_glue/wsc.fixed", small,
                 lambda compat: [prep.mpt_wsc], _labels(2), _classes(2), _ACC,
                 sizes=_small(554, 104)),
      c("cb", "super_glue/cb", small, ("premise", "hypothesis"), 3,
        [metrics.mean_multiclass_f1(3), metrics.accuracy], _small(250, 56)),
  ]


def _other_specs() -> list[MptDataset]:
  """MRQA, the four other targets and the sources SQuAD and ReCoRD."""
  c = _classification
  return [
      _qa("nq", "mrqa/natural_questions", sizes=_large(103071, 12836)),
      _qa("hotpotqa", "mrqa/hotpot_qa", sizes=_large(71928, 5904)),
      _qa("searchqa", "mrqa/search_qa", sizes=_large(116384, 16980)),
      _qa("newsqa", "mrqa/news_qa", sizes=_large(73160, 4212)),
      MptDataset(
          "winogrande", "winogrande",
          splits.Protocol(splits.LARGE, {"train": "train_xl",
                                         "test": "validation"}),
          lambda compat: [functools.partial(prep.mpt_winogrande,
                                            compat=compat)],
          _labels(2), _classes(2), _ACC, compat_differs=True,
          sizes=_large(39398, 1267)),
      c("yelp", "yelp_polarity_reviews",
        splits.Protocol(splits.LARGE, {"train": "train", "test": "test"},
                        train_cap=100_000), (("sentence", "text"),), 2, _ACC,
        _large(559000, 38000, cap=100_000)),
      c("scitail", "sci_tail", _SMALL_PROTOCOL, ("premise", "hypothesis"), 2,
        _ACC, _small(23596, 1304)),
      c("paws", "paws_wiki/labeled_final_tokenized",
        splits.Protocol(splits.OFFICIAL, {"train": "train",
                                          "validation": "validation",
                                          "test": "test"}),
        ("sentence1", "sentence2"), 2, _ACC,
        {"train": 49401, "validation": 8000, "test": 8000}),
      _qa("squad", "squad/v1.1", answers_key="answers/text",
          sizes=_large(86599, 10570)),
      MptDataset("record", "super_glue/record", _LARGE_PROTOCOL,
                 lambda compat: [prep.record], lambda compat: None,
                 post.record, [metrics.record],
                 sizes=_large(99730, 10000)),
  ]


DATASET_SPECS: dict[str, MptDataset] = {
    d.name: d for d in _glue_specs() + _super_glue_specs() + _other_specs()}


def task_name(dataset: str, k: Optional[int] = None, seed: Optional[int] = None,
              compat: bool = False) -> str:
  """The grammar name of a dataset variant (see the module docstring)."""
  name = PREFIX + dataset
  if k is not None:
    name += f"_k{k}"
    if seed is not None and seed != DEFAULT_FEW_SHOT_SEED:
      name += f"_s{seed}"
  return name + ("_compat" if compat else "")


_NAME_RE = re.compile(r"^mpt_(?P<dataset>[a-z0-9]+?)(?:_k(?P<k>\d+)"
                      r"(?:_s(?P<seed>\d+))?)?(?P<compat>_compat)?$")


def parse_name(name: str) -> Optional[dict[str, Any]]:
  """{"dataset", "k", "seed", "compat"} of a grammar name, or None."""
  m = _NAME_RE.match(name)
  if not m or m["dataset"] not in DATASET_SPECS:
    return None
  k = int(m["k"]) if m["k"] else None
  seed = int(m["seed"]) if m["seed"] else (
      DEFAULT_FEW_SHOT_SEED if k is not None else None)
  return {"dataset": m["dataset"], "k": k, "seed": seed,
          "compat": bool(m["compat"])}


def _stsb_class(compat: bool):
  """STS-B score -> 0/1 on the task's rounded target (DePT: <= 2.5 is 0)."""
  def fn(score):
    if compat:
      rounded = np.round((float(np.float32(score)) * 5) / 5, decimals=1)
    else:
      rounded = np.round(np.float32(score) * np.float32(5)) / np.float32(5)
    return int(rounded > 2.5)
  return fn


def register(dataset: str, k: Optional[int] = None,
             seed: Optional[int] = None, compat: bool = False) -> str:
  """Registers (idempotently) one task variant; returns its name."""
  if dataset not in DATASET_SPECS:
    raise ValueError(f"unknown MPT dataset {dataset!r}; known: {DATASETS}")
  spec = DATASET_SPECS[dataset]
  seed = DEFAULT_FEW_SHOT_SEED if (k is not None and seed is None) else seed
  name = task_name(dataset, k, seed, compat)
  if name in seqio.TaskRegistry.names():
    return name
  labels = spec.labels(compat)
  few_shot = None
  if k is not None:
    if labels is None:
      raise ValueError(f"{name}: k-shot variants need a classification "
                       f"dataset; {dataset} is generative.")
    few_shot = splits.FewShot(
        k, seed, "dept" if compat else "per_class",
        _stsb_class(compat) if dataset == "stsb" else None)
  seqio.TaskRegistry.add(
      name,
      source=splits.ProtocolSource(spec.raw, spec.protocol, few_shot, name),
      preprocessors=spec.text(compat) + prep.tokenize_steps(),
      output_features=prep.output_features(),
      postprocess_fn=spec.postprocess_fn,
      metric_fns=list(spec.metric_fns))
  if labels is not None:
    post.register_labels(name, labels)
  return name


def ensure_registered(name: str) -> bool:
  """Registers `name` if it follows the grammar; False if it does not."""
  if name in seqio.TaskRegistry.names():
    return True
  parsed = parse_name(name)
  if parsed is None:
    return False
  if parsed["compat"] and parsed["k"] is None and not DATASET_SPECS[
      parsed["dataset"]].compat_differs:
    raise ValueError(f"{name}: {parsed['dataset']} has no compat variant "
                     "(DePT's code does not differ from the default).")
  register(**parsed)
  return True


def reference_sizes(name: str) -> Optional[dict[str, int]]:
  """Reference split sizes of a grammar name (None where not known)."""
  parsed = parse_name(name)
  if parsed is None:
    return None
  spec = DATASET_SPECS[parsed["dataset"]]
  if spec.sizes is None:
    return None
  sizes = dict(spec.sizes)
  if parsed["k"] is not None:
    k = parsed["k"]
    n_classes = 2 if parsed["dataset"] == "stsb" else len(spec.labels(False))
    if parsed["compat"]:
      # DePT's sampler: k // C per class plus one open slot that is only
      # reached when C * (k // C) == k - 1 (CB k=32 gives 30, not 32).
      full = n_classes * (k // n_classes)
      sizes["train"] = full + (1 if full == k - 1 else 0)
    else:
      sizes["train"] = k * n_classes
  return sizes


def _register_all():
  for dataset, spec in DATASET_SPECS.items():
    register(dataset)
    if spec.compat_differs:
      register(dataset, compat=True)
  for dataset in FEW_SHOT_DATASETS:
    for k in splits.FEW_SHOT_KS:
      if (dataset, k) not in _IMPOSSIBLE_PER_CLASS:
        register(dataset, k)
      register(dataset, k, compat=True)


_register_all()
