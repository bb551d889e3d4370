"""How a task scores a frozen backbone plus a trainable method.

  task_model   the shared partition (trainable / frozen) and method plumbing
  seq2seq      text-to-text on encoder-decoders (T5): loss, scoring, decoding
  classifier   classification / regression / multiple choice on encoders (BERT)
  heads        trainable task heads of the classifier
  losses       cross-entropy, classification losses, prompt distillation
  decoding     greedy decoding, rank classification, sequence scores

`build` picks the task model for a backbone and a data object.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ptuning_jax.models import classifier
from ptuning_jax.models import heads
from ptuning_jax.models import seq2seq
from ptuning_jax.models import task_model

TEXT = "text"
# Data kind -> the backbone kinds (`backbones.registry.KINDS`) that serve it.
SERVES = {TEXT: ("seq2seq",), "classification": ("encoder",),
          "regression": ("encoder",), "multiple_choice": ("encoder",)}


def build(backbone: Any, method: Any, data: Any, *,
          head: Callable[..., Any] = heads.ClassificationHead, z_loss: float = 0.0,
          label_smoothing: float = 0.0,
          loss_terms: Sequence[Any] = ()) -> task_model.TaskModel:
  """The task model for `backbone` (a `backbones.Backbone`), `method` (a built
  method module) and `data` (its `task_kind`, default "text").

  Args:
    backbone: the loaded backbone (its family says what it computes).
    method: the method module.
    data: the run's data object; classification data also give
      `num_classes`.
    head: factory of the classifier's head, called with `num_classes`.
    z_loss, label_smoothing: of the seq2seq cross-entropy.
    loss_terms: extra objective terms (e.g. `losses.PromptDistillation`).
  Raises:
    ValueError: the backbone cannot serve the data's kind.
  """
  kind = getattr(data, "task_kind", TEXT)
  for term in loss_terms:  # e.g. distillation teachers that do not fit
    if hasattr(term, "check"):
      term.check(backbone.spec, method)
  if kind not in SERVES:
    raise ValueError(f"Unknown task kind {kind!r} of {type(data).__name__}; expected "
                     f"one of {sorted(SERVES)}.")
  family = backbone.family
  if family.kind not in SERVES[kind]:
    raise ValueError(
        f"The {family.name} backbone is a {family.kind} model; {kind} data "
        f"({type(data).__name__}) needs a {' or '.join(SERVES[kind])} backbone.")
  if kind == TEXT:
    return seq2seq.Seq2SeqModel(backbone.module, method, tuple(loss_terms),
                                z_loss=z_loss, label_smoothing=label_smoothing)
  num_classes = data.num_classes if kind == "classification" else 1
  return classifier.ClassifierModel(backbone.module, method, tuple(loss_terms),
                                    head=head(num_classes=num_classes), kind=kind)
