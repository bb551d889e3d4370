"""Tests for the seqio registration of the synthetic tasks."""
import numpy as np
import pytest
import seqio

from ptuning_jax.data import synthetic
from ptuning_jax.data import vocab as vocab_lib
from ptuning_jax.data.seqio import synthetic_tasks


def test_all_tasks_and_mixture_registered():
  for task in synthetic.TASKS:
    assert f"synthetic_{task}" in seqio.TaskRegistry.names()
  mixture = seqio.get_mixture_or_task("synthetic_pretrain_mixture")
  assert isinstance(mixture, seqio.Mixture)
  assert sorted(t.name for t in mixture.tasks) == sorted(
      f"synthetic_{t}" for t in synthetic.PRETRAIN_TASKS)
  assert "synthetic_freq" not in [t.name for t in mixture.tasks]
  assert all(mixture.get_rate(t) == 1.0 for t in mixture.tasks)


def test_register_is_idempotent():
  before = seqio.TaskRegistry.get("synthetic_copy")
  synthetic_tasks.register()
  synthetic_tasks.register()
  assert seqio.TaskRegistry.get("synthetic_copy") is before


def test_examples_match_the_generator_and_byte_ids():
  task = seqio.get_mixture_or_task("synthetic_more")
  ds = task.get_dataset({"inputs": 64, "targets": 16}, split="validation",
                        shuffle=False, use_cached=False, num_epochs=1)
  got = list(ds.take(20).as_numpy_iterator())
  want = synthetic.eval_examples("more", 20, seed=synthetic_tasks.SEED)
  vocab = vocab_lib.ByteVocab()
  for g, w in zip(got, want):
    assert g["inputs_pretokenized"].decode() == w["inputs"]
    assert g["targets_pretokenized"].decode() == w["targets"]
    # Both features end in EOS (id 1).
    np.testing.assert_array_equal(g["inputs"], vocab.encode(w["inputs"]) + [1])
    np.testing.assert_array_equal(g["targets"],
                                  vocab.encode(w["targets"]) + [1])


def test_splits_and_sizes():
  task = seqio.get_mixture_or_task("synthetic_freq")
  assert set(task.splits) == {"train", "validation", "test"}
  for split, size in synthetic_tasks.SPLIT_SIZES.items():
    assert task.num_input_examples(split) == size


def test_metric_and_postprocessor():
  task = seqio.get_mixture_or_task("synthetic_freq")
  assert task.predict_metric_fns == [synthetic_tasks.exact_match]
  assert task.postprocess_fn(b" b ", example={}, is_target=False) == "b"
  assert synthetic_tasks.exact_match(["a", "b", "c", "a"],
                                     ["a", "c", "c", "b"]) == {"accuracy": 50.0}
  with pytest.raises(ValueError, match="2 targets vs 1 predictions"):
    synthetic_tasks.exact_match(["a", "b"], ["a"])


def test_label_strings():
  assert synthetic_tasks.label_strings("synthetic_freq") == ("a", "b", "c")
  assert synthetic_tasks.label_strings("synthetic_sort") is None
  with pytest.raises(ValueError, match="not a synthetic task"):
    synthetic_tasks.label_strings("glue_sst2")
