"""Tests for the toy task generator ptuning_jax.data.synthetic."""
import collections
import re

import pytest

from ptuning_jax.data import synthetic
from ptuning_jax.data import vocab as vocab_lib


def _majority(s, candidates):
  counts = {c: s.count(c) for c in candidates}
  best = max(counts.values())
  winners = [c for c, n in counts.items() if n == best]
  assert len(winners) == 1, (s, counts)  # strict majority by construction
  return winners[0]


def _solve(inputs):
  """An independent reference solver, parsing the input text."""
  prefix, body = inputs.split(": ", 1)
  words = prefix.split(" ")
  name = words[0]
  if name == "copy":
    return body
  if name == "reverse":
    return body[::-1]
  if name == "sort":
    return "".join(sorted(body))
  if name == "upper":
    return body.upper()
  if name == "count":
    return str(body.count(words[1]))
  if name == "max":
    return str(max(int(c) for c in body))
  if name == "add":
    a, b = body.split("+")
    return str(int(a) + int(b))
  if name == "more":
    return _majority(body, words[1:])
  if name == "freq":
    return _majority(body, "abc")
  raise AssertionError(inputs)


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_targets_are_correct(task):
  for ex in synthetic.train_examples(task, 300, seed=1):
    assert ex["inputs"].startswith(task + " ") or ex["inputs"].startswith(
        task + ":"), ex
    assert ex["targets"] == _solve(ex["inputs"]), ex


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_lengths_and_alphabet(task):
  vocab = vocab_lib.ByteVocab()
  for split in synthetic.SPLITS:
    for ex in synthetic.examples(task, split, 300, seed=0):
      for key, limit in (("inputs", synthetic.MAX_INPUT_CHARS),
                         ("targets", synthetic.MAX_TARGET_CHARS)):
        text = ex[key]
        assert 0 < len(vocab.encode(text)) <= limit, ex
      body = ex["inputs"].split(": ", 1)[1]
      assert re.fullmatch(r"[a-h0-9+]+", body), ex
      assert re.fullmatch(r"[a-hA-H0-9]+", ex["targets"]), ex


def test_determinism_seeds_and_splits():
  a = synthetic.train_examples("more", 50, seed=3)
  assert a == synthetic.train_examples("more", 50, seed=3)
  assert a[:10] == synthetic.train_examples("more", 10, seed=3)
  assert a != synthetic.train_examples("more", 50, seed=4)
  assert a != synthetic.eval_examples("more", 50, seed=3)
  assert (synthetic.eval_examples("more", 50, seed=3) !=
          synthetic.eval_examples("more", 50, seed=3, split="test"))


def test_heldout_task_design():
  assert synthetic.HELDOUT_TASK not in synthetic.PRETRAIN_TASKS
  assert synthetic.label_strings(synthetic.HELDOUT_TASK) == ("a", "b", "c")
  assert all(synthetic.label_strings(t) is None
             for t in synthetic.PRETRAIN_TASKS)
  vocab = vocab_lib.ByteVocab()
  assert all(len(vocab.encode(l)) == 1 for l in synthetic.HELDOUT_LABELS)
  exs = synthetic.train_examples(synthetic.HELDOUT_TASK, 3000, seed=0)
  counts = collections.Counter(ex["targets"] for ex in exs)
  assert set(counts) == set(synthetic.HELDOUT_LABELS)
  assert min(counts.values()) > 900, counts  # balanced around 1000 each
  # The held-out prefix never appears in the pretraining data.
  mixture = synthetic.mixture_examples("train", 2000, seed=0)
  assert not any(ex["inputs"].startswith("freq") for ex in mixture)


@pytest.mark.parametrize("task", ["freq", "add", "more"])
def test_splits_are_disjoint(task):
  inputs = {split: {ex["inputs"] for ex in synthetic.examples(
      task, split, 2000 if split == "train" else 300, seed=split == "test")}
            for split in synthetic.SPLITS}
  assert not inputs["train"] & inputs["validation"]
  assert not inputs["train"] & inputs["test"]
  assert not inputs["validation"] & inputs["test"]
  for split, texts in inputs.items():
    assert all(synthetic.split_of(t) == split for t in texts)


def test_mixture_examples_cycle_tasks():
  exs = synthetic.mixture_examples("validation", 20, seed=0)
  assert [ex["task"] for ex in exs[:8]] == list(synthetic.PRETRAIN_TASKS)
  for ex in exs:
    assert ex["targets"] == _solve(ex["inputs"])
    assert ex["inputs"].startswith(ex["task"])


def test_errors():
  with pytest.raises(ValueError, match="unknown synthetic task 'nope'"):
    synthetic.train_examples("nope", 1)
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    synthetic.examples("copy", "dev", 1)
  with pytest.raises(ValueError, match="validation' or 'test"):
    synthetic.eval_examples("copy", 1, split="train")
