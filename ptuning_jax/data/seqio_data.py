"""The data object of a run for seqio tasks and mixtures (see `task_data`).

Dimension letters: N examples, T input length, S target length, C labels.

Training data are the task's preprocessed examples materialised once as
arrays (`loading.task_arrays`) and batched by the deterministic, resumable
`input_pipeline.BatchIterator` (a mixture: `MixtureIterator` with the
mixture's rates), so a resumed run sees exactly the examples it would have
seen. Every host holds the arrays and takes its own slice of each global
batch.
"""
from __future__ import annotations

import contextlib
import importlib
import re
from typing import Iterator, Mapping, Optional, Sequence

import jax
import seqio
import tensorflow as tf

from ptuning_jax import evaluation
from ptuning_jax import input_pipeline
from ptuning_jax.data import labels as labels_lib
from ptuning_jax.data import loading


class DataError(ValueError):
  """Reading a task's data failed; the message names the file and line."""


@contextlib.contextmanager
def _readable_errors(task: str, split: str) -> Iterator[None]:
  """TF wraps errors raised inside tf.data generators in an OpError whose
  message buries the original; re-raise the original line, naming the task."""
  try:
    yield
  except tf.errors.OpError as e:
    lines = [l.strip() for l in str(e.message).splitlines() if l.strip()]
    cause = next((l for l in lines if re.search(r"\w+Error: ", l)), lines[0] if lines else str(e))
    cause = re.sub(r"^.*?\}\}\s*", "", cause)
    raise DataError(f"task {task!r} split {split!r}: {cause}") from None


class SeqioData:
  """Attributes mirror the constructor; `vocab` is the task's targets vocabulary.

  Args:
    task: a registered seqio task or mixture name.
    feature_lengths: {"inputs": T, "targets": S}.
    batch_size: global train batch size.
    seed: shuffling seed.
    module: module(s) to import first (they register the task).
    train_split: split to train on.
    label_strings: rank-classification candidates; default the task's
      registered labels (`data.labels`).
    max_train_examples: use only the first N training examples (per task).
  """

  def __init__(self, task: str, feature_lengths: Mapping[str, int],
               batch_size: int = 32, seed: int = 42,
               module: Optional[str | Sequence[str]] = None,
               train_split: str = "train",
               label_strings: Optional[Sequence[str]] = None,
               max_train_examples: Optional[int] = None):
    for m in ([module] if isinstance(module, str) else (module or [])):
      importlib.import_module(m)
    from ptuning_jax.data import mpt_tasks  # pylint: disable=g-import-not-at-top
    mpt_tasks.ensure_registered(task)  # on-demand names, e.g. mpt_rte_k16
    try:
      self.provider = seqio.get_mixture_or_task(task)
    except ValueError as e:
      raise ValueError(f"seqio task or mixture {task!r} is not registered "
                       f"(MIXTURE_OR_TASK_NAME); import its module via "
                       f"MIXTURE_OR_TASK_MODULE. {e}") from None
    self.task, self.feature_lengths = task, dict(feature_lengths)
    self.batch_size, self.seed, self.train_split = batch_size, seed, train_split
    self.max_train_examples = max_train_examples
    self.label_strings = (tuple(label_strings) if label_strings
                          else labels_lib.get(task))
    self.vocab = self.provider.output_features["targets"].vocabulary
    self._eval_cache: dict = {}

  def train_iterator(self):
    with _readable_errors(self.task, self.train_split):
      arrays = loading.task_arrays(self.task, self.train_split, self.feature_lengths,
                                   max_examples=self.max_train_examples)
    kwargs = dict(process_index=jax.process_index(),
                  process_count=jax.process_count())
    if isinstance(arrays, loading.MixtureArrays):
      return input_pipeline.MixtureIterator(arrays.datasets, arrays.rates,
                                            self.batch_size, self.seed, **kwargs)
    return input_pipeline.BatchIterator(arrays, self.batch_size, self.seed, **kwargs)

  def eval_data(self, split: str, max_examples: Optional[int] = None
                ) -> evaluation.EvalData:
    if not isinstance(self.provider, seqio.Task):
      raise ValueError(f"{self.task!r} is a mixture; evaluate one of its tasks "
                       f"({[t.name for t in self.provider.tasks]}).")
    key = (split, max_examples)
    if key not in self._eval_cache:
      with _readable_errors(self.task, split):
        self._eval_cache[key] = loading.load_eval_set(
            self.task, split, self.feature_lengths, max_examples=max_examples,
            label_strings=self.label_strings)
    es = self._eval_cache[key]
    rank = None
    if es.candidate_targets is not None:
      rank = lambda scores: loading.evaluate_scores(self.provider, es, scores)
    return evaluation.EvalData(
        es.dataset, lambda ids: loading.evaluate_predictions(self.provider, es, ids),
        es.candidate_targets, rank)

  def encode_inputs(self, texts: Sequence[str]) -> input_pipeline.ArrayDataset:
    in_vocab = self.provider.output_features["inputs"].vocabulary
    add_eos = self.provider.output_features["inputs"].add_eos
    examples = [{"inputs": in_vocab.encode(t), "targets": []} for t in texts]
    arrays = input_pipeline.convert_examples(examples, self.feature_lengths,
                                             append_eos_inputs=add_eos)
    return input_pipeline.ArrayDataset(arrays, [{"inputs": t} for t in texts])
