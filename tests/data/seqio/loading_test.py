"""Tests for ptuning_jax.data.seqio.loading on the synthetic seqio tasks."""
import functools

import numpy as np
import pytest
import seqio

from ptuning_jax.data import pipeline
from ptuning_jax.data import synthetic
from ptuning_jax.data import vocab as vocab_lib
from ptuning_jax.data.seqio import loading
from ptuning_jax.data.seqio import synthetic_tasks

LENGTHS = {"inputs": 40, "targets": 16}
PROBE_TASK = "loading_test_probe"


@pytest.fixture(scope="module")
def sort_arrays():
  return loading.task_arrays("synthetic_sort", "validation", LENGTHS,
                             max_examples=48)


def test_task_arrays_equal_seqio_feature_converter(sort_arrays):
  task = seqio.get_mixture_or_task("synthetic_sort")
  ds = task.get_dataset(LENGTHS, split="validation", shuffle=False,
                        use_cached=False, num_epochs=1).take(48)
  converted = seqio.EncDecFeatureConverter(pack=False)(ds, LENGTHS)
  want = list(converted.as_numpy_iterator())
  assert len(want) == len(sort_arrays) == 48
  for key in pipeline.FEATURE_KEYS:
    np.testing.assert_array_equal(
        sort_arrays.arrays[key], np.stack([ex[key] for ex in want]), key)
    assert sort_arrays.arrays[key].dtype == (
        np.float32 if key == "decoder_loss_weights" else np.int32)


def test_task_arrays_equal_the_tf_free_path(sort_arrays):
  exs = synthetic.eval_examples("sort", 48, seed=synthetic_tasks.SEED)
  core = pipeline.encode_examples(exs, vocab_lib.ByteVocab(), LENGTHS)
  for key in pipeline.FEATURE_KEYS:
    np.testing.assert_array_equal(sort_arrays.arrays[key], core.arrays[key])


def test_metadata_keeps_seqio_fields(sort_arrays):
  meta = sort_arrays.metadata[0]
  assert {"inputs", "targets", "inputs_pretokenized",
          "targets_pretokenized"} <= set(meta)
  want = synthetic.eval_examples("sort", 1, seed=synthetic_tasks.SEED)[0]
  assert meta["targets_pretokenized"].decode() == want["targets"]


def test_truncation_keeps_eos():
  short = {"inputs": 6, "targets": 3}
  ds = loading.task_arrays("synthetic_copy", "validation", short,
                           max_examples=16)
  assert ds.arrays["encoder_input_tokens"].shape == (16, 6)
  assert (ds.arrays["encoder_input_tokens"][:, -1] == 1).all()  # all long
  assert (ds.arrays["decoder_target_tokens"][:, -1] == 1).all()


def test_shards_partition_the_examples():
  kwargs = dict(max_examples=30)
  full = loading.task_arrays("synthetic_add", "validation", LENGTHS, **kwargs)
  shards = [loading.task_arrays("synthetic_add", "validation", LENGTHS,
                                shard_index=i, num_shards=3, **kwargs)
            for i in range(3)]
  for i, shard in enumerate(shards):
    np.testing.assert_array_equal(
        shard.arrays["encoder_input_tokens"],
        full.arrays["encoder_input_tokens"][i::3])
  with pytest.raises(ValueError, match="shard_index=3"):
    loading.task_arrays("synthetic_add", "validation", LENGTHS,
                        shard_index=3, num_shards=3)


def test_mixture_gives_per_task_arrays_and_rates():
  mix = loading.task_arrays("synthetic_pretrain_mixture", "validation",
                            LENGTHS, max_examples=8)
  assert isinstance(mix, loading.MixtureArrays)
  assert set(mix.datasets) == {f"synthetic_{t}"
                               for t in synthetic.PRETRAIN_TASKS}
  assert set(mix.rates.values()) == {1.0}
  assert all(len(d) == 8 for d in mix.datasets.values())
  it = pipeline.MixtureIterator(mix.datasets, mix.rates, 16, seed=0)
  assert next(it)["encoder_input_tokens"].shape == (16, LENGTHS["inputs"])


def test_bad_arguments():
  with pytest.raises(ValueError, match="no split 'dev'"):
    loading.task_arrays("synthetic_add", "dev", LENGTHS)
  with pytest.raises(ValueError, match="positive 'targets'"):
    loading.task_arrays("synthetic_add", "validation", {"inputs": 8})
  with pytest.raises(ValueError, match="is a mixture"):
    loading.load_eval_set("synthetic_pretrain_mixture", "validation", LENGTHS)


# ---------------------------------------------------------------- metrics


@pytest.fixture(scope="module")
def freq_eval():
  return loading.load_eval_set("synthetic_freq", "validation", LENGTHS,
                               max_examples=40,
                               label_strings=synthetic.HELDOUT_LABELS)


def _target_ids(eval_set):
  return eval_set.dataset.arrays["decoder_target_tokens"]


def test_evaluate_predictions_with_fake_predictions(freq_eval):
  perfect = _target_ids(freq_eval)
  assert loading.evaluate_predictions("synthetic_freq", freq_eval,
                                      perfect) == {"accuracy": 100.0}
  # Flip the first 10 predictions to another label; junk after EOS is
  # ignored as seqio's decode stops at EOS.
  vocab = vocab_lib.ByteVocab()
  preds = perfect.copy()
  other = {"a": "b", "b": "c", "c": "a"}
  for i in range(10):
    preds[i, 0] = vocab.encode(other[freq_eval.targets[i]])[0]
  preds[:, 3] = vocab.encode("z")[0]
  metrics = loading.evaluate_predictions("synthetic_freq", freq_eval, preds)
  assert metrics == {"accuracy": pytest.approx(100.0 * 30 / 40)}


def test_evaluate_predictions_errors(freq_eval):
  with pytest.raises(ValueError, match="39 rows"):
    loading.evaluate_predictions("synthetic_freq", freq_eval,
                                 _target_ids(freq_eval)[:39])
  with pytest.raises(ValueError, match="evaluated with task"):
    loading.evaluate_predictions("synthetic_sort", freq_eval,
                                 _target_ids(freq_eval))


def test_candidate_targets(freq_eval):
  np.testing.assert_array_equal(
      freq_eval.candidate_targets[:, :3],
      [[ord("a") + 3, 1, 0], [ord("b") + 3, 1, 0], [ord("c") + 3, 1, 0]])
  assert freq_eval.candidate_targets.shape == (3, LENGTHS["targets"])
  with pytest.raises(ValueError, match="more than target_length=2"):
    loading.candidate_targets("synthetic_freq", ["abc"], 2)


def test_evaluate_scores(freq_eval):
  labels = freq_eval.label_strings
  gold = np.array([labels.index(t) for t in freq_eval.targets])
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(len(freq_eval), 3)) - 10.0
  scores[np.arange(len(gold)), gold] = 0.0  # gold wins everywhere ...
  wrong = (gold[:8] + 1) % 3
  scores[np.arange(8), wrong] = 1.0  # ... except in the first 8 examples
  metrics = loading.evaluate_scores("synthetic_freq", freq_eval, scores)
  assert metrics == {"accuracy": pytest.approx(100.0 * 32 / 40)}
  with pytest.raises(ValueError, match=r"\[N, C\] = \(40, 3\)"):
    loading.evaluate_scores("synthetic_freq", freq_eval, scores[:, :2])
  no_labels = loading.load_eval_set("synthetic_freq", "validation", LENGTHS,
                                    max_examples=4)
  with pytest.raises(ValueError, match="no label_strings"):
    loading.evaluate_scores("synthetic_freq", no_labels, scores[:4])


# ------------------------------------------- seqio postprocess conventions


def _probe_postprocess(output, example=None, is_target=False, *, log):
  log.append((output, is_target, example))
  return ("T:" if is_target else "P:") + output


def _probe_metric(targets, predictions):
  return {"pairs": list(zip(targets, predictions))}


@pytest.fixture(scope="module")
def probe_task():
  """A copy of `synthetic_freq` whose postprocessor records its calls."""
  log = []
  if PROBE_TASK in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(PROBE_TASK)
  base = seqio.get_mixture_or_task("synthetic_freq")
  seqio.TaskRegistry.add(
      PROBE_TASK, source=base.source, output_features=base.output_features,
      preprocessors=base.preprocessors,
      postprocess_fn=functools.partial(_probe_postprocess, log=log),
      metric_fns=[_probe_metric])
  yield log
  seqio.TaskRegistry.remove(PROBE_TASK)


def test_postprocess_gets_example_and_is_target(probe_task):
  log = probe_task
  eval_set = loading.load_eval_set(PROBE_TASK, "validation", LENGTHS,
                                   max_examples=5)
  preds = eval_set.dataset.arrays["decoder_target_tokens"]
  metrics = loading.evaluate_predictions(PROBE_TASK, eval_set, preds)
  want = [("T:" + t, "P:" + t) for t in eval_set.targets]
  assert metrics == {"pairs": want}
  assert len(log) == 10
  targets_calls = [c for c in log if c[1]]
  preds_calls = [c for c in log if not c[1]]
  assert [c[0] for c in targets_calls] == eval_set.targets
  for (_, _, ex), meta in zip(targets_calls, eval_set.dataset.metadata):
    assert ex is meta  # the seqio example, as seqio's evaluator passes it
  for (_, _, ex), meta in zip(preds_calls, eval_set.dataset.metadata):
    assert ex is meta
    assert isinstance(ex["inputs_pretokenized"], bytes)


def test_raw_targets_fall_back_to_decoding():
  task = seqio.get_mixture_or_task("synthetic_freq")
  vocab = vocab_lib.ByteVocab()
  meta = [{"targets": np.array(vocab.encode("b") + [1], np.int32)}]
  assert loading.raw_targets(task, meta) == ["b"]
