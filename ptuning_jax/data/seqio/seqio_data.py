"""The data object of a run for seqio tasks and mixtures (see `task_data`).

Dimension letters: N examples, T input length, S target length, C labels.

Training data are the task's preprocessed examples materialised once as
arrays (`loading.task_arrays`) and batched by the deterministic, resumable
`pipeline.BatchIterator` (a mixture: `MixtureIterator` with the
mixture's rates), so a resumed run sees exactly the examples it would have
seen. Every host holds the arrays and takes its own slice of each global
batch.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
from typing import Iterator, Mapping, Optional, Sequence, Union

import jax
import numpy as np
import seqio
import tensorflow as tf

from ptuning_jax.training import evaluation
from ptuning_jax.data import pipeline
from ptuning_jax.data.seqio import labels as labels_lib
from ptuning_jax.data.seqio import loading
from ptuning_jax.data.seqio import sources
from ptuning_jax.data.seqio import vocabularies


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


def keep_tensorflow_on_cpu() -> None:
  """Hides accelerators from TensorFlow, which only feeds the input pipeline
  here, so it never takes GPU memory from JAX. A no-op once TF has
  initialised its devices."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices.
    pass


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
    task_index: add the per-example feature `task_index` [B] that multi-task
      methods (MPT, multitask prompts) read: True numbers the mixture's tasks
      in seqio's order (by name; a single task is 0); a list of task names
      gives the order (e.g. that of MPT's teacher prompts) and must name
      every task of the mixture once. Evaluation batches carry the evaluated
      task's index.
    eval_task: the task to evaluate when `task` is a mixture (default: none,
      so evaluating a mixture is an error).
    source: where every task's raw data comes from (`sources.SourceConfig`,
      e.g. local files in the official formats); applied with
      `sources.configure` when this object is built, so it switches every
      task of the process. None leaves the configuration as it is (a
      `sources.configure` call, else the environment, else TFDS).
    spm_path: the T5 SentencePiece model of the T5 tasks, applied with
      `vocabularies.configure` when built; None leaves it as it is (else
      $PTUNING_JAX_SPM_PATH, else T5's GCS copy).
  """

  def __init__(self, task: str, feature_lengths: Mapping[str, int],
               batch_size: int = 32, seed: int = 42,
               module: Optional[str | Sequence[str]] = None,
               train_split: str = "train",
               label_strings: Optional[Sequence[str]] = None,
               max_train_examples: Optional[int] = None,
               task_index: Union[bool, Sequence[str]] = False,
               eval_task: Optional[str] = None,
               source: Optional[sources.SourceConfig] = None,
               spm_path: Optional[str] = None):
    keep_tensorflow_on_cpu()
    if source is not None:
      if not isinstance(source, sources.SourceConfig):
        raise TypeError(f"SeqioData.source={source!r}: expected a "
                        "sources.SourceConfig (gin: @sources.SourceConfig()).")
      sources.configure(source)
    if spm_path is not None:
      vocabularies.configure(spm_path=spm_path)
    for m in ([module] if isinstance(module, str) else (module or [])):
      importlib.import_module(m)
    from ptuning_jax.data.seqio import mpt_tasks  # pylint: disable=g-import-not-at-top
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
    self.task_names = (tuple(t.name for t in self.provider.tasks)
                       if isinstance(self.provider, seqio.Mixture) else (task,))
    self.eval_task = self._check_eval_task(eval_task)
    self.task_index_names = self._task_order(task_index)
    self.label_strings = (tuple(label_strings) if label_strings
                          else self.eval_task and labels_lib.get(self.eval_task))
    self.vocab = self.provider.output_features["targets"].vocabulary
    self._check_spm_path(spm_path)
    self._eval_cache: dict = {}

  def _check_spm_path(self, spm_path: Optional[str]) -> None:
    """A vocabulary resolved earlier in this process keeps its path; say so
    rather than silently use another model than `spm_path`."""
    if spm_path is None:
      return
    for name, feature in self.provider.output_features.items():
      got = getattr(feature.vocabulary, "sentencepiece_model_file", spm_path)
      if os.path.realpath(got) != os.path.realpath(spm_path):
        raise ValueError(
            f"SeqioData.spm_path={spm_path!r}: the {name!r} vocabulary of "
            f"{self.task!r} already uses {got!r} (resolved earlier in this "
            "process); one process serves one SentencePiece model.")

  def _check_eval_task(self, eval_task: Optional[str]) -> Optional[str]:
    if isinstance(self.provider, seqio.Task):
      if eval_task not in (None, self.task):
        raise ValueError(f"SeqioData.eval_task={eval_task!r}: the run trains on the "
                         f"single task {self.task!r}; leave eval_task unset.")
      return self.task
    if eval_task is not None and eval_task not in self.task_names:
      raise ValueError(f"SeqioData.eval_task={eval_task!r} is not a task of mixture "
                       f"{self.task!r} ({list(self.task_names)}).")
    return eval_task

  def _task_order(self, task_index: Union[bool, Sequence[str]]
                  ) -> Optional[tuple[str, ...]]:
    if task_index is False or task_index is None:
      return None
    if task_index is True:
      return self.task_names
    if isinstance(task_index, str):
      raise ValueError(f"SeqioData.task_index={task_index!r}: give True or a list "
                       "of task names.")
    order = tuple(task_index)
    pipeline.check_task_order(order, self.task_names, "SeqioData.task_index")
    return order

  def train_iterator(self):
    with _readable_errors(self.task, self.train_split):
      arrays = loading.task_arrays(self.task, self.train_split, self.feature_lengths,
                                   max_examples=self.max_train_examples)
    kwargs = dict(process_index=jax.process_index(),
                  process_count=jax.process_count())
    if isinstance(arrays, loading.MixtureArrays):
      return pipeline.MixtureIterator(
          arrays.datasets, arrays.rates, self.batch_size, self.seed,
          task_index=self.task_index_names, **kwargs)
    return pipeline.BatchIterator(self._with_task_index(arrays, self.task),
                                        self.batch_size, self.seed, **kwargs)

  def _with_task_index(self, dataset: pipeline.ArrayDataset, task: str
                       ) -> pipeline.ArrayDataset:
    """`dataset` plus the constant `task_index` [N] of `task`, if enabled."""
    if self.task_index_names is None:
      return dataset
    if task not in self.task_index_names:
      raise ValueError(f"SeqioData: task {task!r} has no place in task_index="
                       f"{list(self.task_index_names)}.")
    index = np.full([len(dataset)], self.task_index_names.index(task), np.int32)
    return pipeline.ArrayDataset(
        {**dataset.arrays, pipeline.TASK_INDEX: index}, dataset.metadata)

  def eval_data(self, split: str, max_examples: Optional[int] = None
                ) -> evaluation.EvalData:
    if self.eval_task is None:
      raise ValueError(f"{self.task!r} is a mixture; set SeqioData.eval_task to one of "
                       f"its tasks ({list(self.task_names)}) to evaluate.")
    task = seqio.get_mixture_or_task(self.eval_task)
    key = (split, max_examples)
    if key not in self._eval_cache:
      with _readable_errors(self.eval_task, split):
        es = loading.load_eval_set(
            self.eval_task, split, self.feature_lengths, max_examples=max_examples,
            label_strings=self.label_strings)
      self._eval_cache[key] = es, self._with_task_index(es.dataset, self.eval_task)
    es, dataset = self._eval_cache[key]
    rank = None
    if es.candidate_targets is not None:
      rank = lambda scores: loading.evaluate_scores(task, es, scores)
    return evaluation.EvalData(
        dataset,
        lambda ids: loading.evaluate_predictions(task, es, ids),
        es.candidate_targets, rank)

  def encode_inputs(self, texts: Sequence[str]) -> pipeline.ArrayDataset:
    in_vocab = self.provider.output_features["inputs"].vocabulary
    add_eos = self.provider.output_features["inputs"].add_eos
    examples = [{"inputs": in_vocab.encode(t), "targets": []} for t in texts]
    arrays = pipeline.convert_examples(examples, self.feature_lengths,
                                             append_eos_inputs=add_eos)
    return pipeline.ArrayDataset(arrays, [{"inputs": t} for t in texts])
