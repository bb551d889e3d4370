"""The toy tasks of `ptuning_jax.data.synthetic` as seqio Tasks and a Mixture.

Registered names: `synthetic_<task>` for every task in `synthetic.TASKS`
(the held-out `synthetic_freq` included), `synthetic_pretrain_mixture`
(the pretraining families at equal rates) and `synthetic_source_mixture`
(`SOURCE_TASKS`, the short-answer families at equal rates: the source tasks
of the MPT example configs). Features `inputs` / `targets` use
the byte vocabulary and both end in EOS (T5 convention), so
`input_pipeline.encode_examples(..., ByteVocab(), ...)` on the raw examples
gives the same arrays as loading these tasks through seqio.

Registration happens on import and is idempotent (`register()` may be called
again). Split sizes are fixed by `SPLIT_SIZES`; examples come from
`synthetic.examples(task, split, n, seed=SEED)`.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import seqio
import tensorflow as tf

from ptuning_jax.data import synthetic
from ptuning_jax.data.seqio import vocabularies

PREFIX = "synthetic_"
MIXTURE_NAME = "synthetic_pretrain_mixture"
SOURCE_MIXTURE_NAME = "synthetic_source_mixture"
SOURCE_TASKS = ("count", "max", "more")
SEED = 0
SPLIT_SIZES = {"train": 10000, "validation": 500, "test": 500}


def task_name(task: str) -> str:
  return PREFIX + task


def label_strings(name: str) -> Optional[tuple[str, ...]]:
  """Rank-classification candidates of a registered synthetic task, or None."""
  if not name.startswith(PREFIX):
    raise ValueError(f"{name!r} is not a synthetic task name.")
  return synthetic.label_strings(name[len(PREFIX):])


def output_features() -> dict[str, seqio.Feature]:
  vocab = vocabularies.byte_vocabulary()
  return {"inputs": seqio.Feature(vocab, add_eos=True),
          "targets": seqio.Feature(vocab, add_eos=True)}


def _dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None,
                *, task: str) -> tf.data.Dataset:
  """All examples of one split, in generation order (never shuffled here)."""
  del shuffle_files, seed  # The split is a fixed, seeded list.
  exs = synthetic.examples(task, split, SPLIT_SIZES[split], seed=SEED)
  return tf.data.Dataset.from_tensor_slices({
      "inputs": [ex["inputs"] for ex in exs],
      "targets": [ex["targets"] for ex in exs],
  })


def strip_postprocessor(output: Any, example: Any = None,
                        is_target: bool = False) -> str:
  """Decoded text (or bytes) -> stripped `str`."""
  del example, is_target
  if isinstance(output, bytes):
    output = output.decode("utf-8")
  return output.strip()


def exact_match(targets: Sequence[str],
                predictions: Sequence[str]) -> dict[str, float]:
  """Percentage of predictions equal to their target."""
  if len(targets) != len(predictions):
    raise ValueError(f"exact_match: {len(targets)} targets vs "
                     f"{len(predictions)} predictions.")
  hits = sum(t == p for t, p in zip(targets, predictions))
  return {"accuracy": 100.0 * hits / max(len(targets), 1)}


def register() -> None:
  """Adds the synthetic tasks and the mixture unless already registered."""
  for task in synthetic.TASKS:
    name = task_name(task)
    if name in seqio.TaskRegistry.names():
      continue
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            functools.partial(_dataset_fn, task=task),
            splits=tuple(SPLIT_SIZES),
            num_input_examples=dict(SPLIT_SIZES)),
        output_features=output_features(),
        preprocessors=[seqio.preprocessors.tokenize,
                       seqio.preprocessors.append_eos_after_trim],
        postprocess_fn=strip_postprocessor,
        metric_fns=[exact_match])
  if MIXTURE_NAME not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(
        MIXTURE_NAME,
        [(task_name(t), 1.0) for t in synthetic.PRETRAIN_TASKS])
  if SOURCE_MIXTURE_NAME not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(SOURCE_MIXTURE_NAME,
                              [(task_name(t), 1.0) for t in SOURCE_TASKS])


register()
