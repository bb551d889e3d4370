"""A toy multi-task text-to-text world for an honest offline demo.

This is NOT a benchmark. It exists so the repository can show the whole
prompt-tuning loop (pretrain a tiny T5, freeze it, tune a soft prompt on a
task it was not trained on, compare with zero-shot) on a laptop, with no
downloaded weights or data. Everything is generated from a seed.

Strings are short and use the letters `a`-`h` and digits, so every character
is one token of the byte vocabulary (`ptuning_jax.data.vocab.ByteVocab`). Each
input starts with a task prefix such as `sort: `.

Pretraining families (`PRETRAIN_TASKS`), each a small skill:

  copy      `copy: dbca`            -> `dbca`
  reverse   `reverse: dbca`         -> `acbd`
  sort      `sort: dbca`            -> `abcd`
  upper     `upper: dbca`           -> `DBCA`
  count     `count b: abbcb`        -> `3`     (occurrences of one letter)
  max       `max: 3817`             -> `8`     (largest digit)
  add       `add: 12+7`             -> `19`
  more      `more a c: cadcaeac`    -> `c`     (which listed letter is most
                                                frequent; 2 or 3 letters)

Held-out task (`HELDOUT_TASK`, never in the pretraining mixture):

  freq      `freq: abcbcbb`         -> `b`     (most frequent letter of a
                                                string over a, b, c)

Design rationale:

  * Learnability: every pretraining target is a simple function of a string
    of at most ~20 bytes, so a d_model 64-128, 2+2 layer T5 learns the
    mixture well in minutes on a CPU. Families share their input alphabet
    so the encoder learns letter identity and counting once.
  * Not solved zero-shot: the prefix `freq: ` never occurs in pretraining.
    A frozen backbone given it falls back to some pretraining behaviour
    (copying, counting, ...), whose first output byte is only weakly tied to
    the majority letter; with rank classification over the labels `a`, `b`,
    `c` its accuracy should sit near the 1/3 chance rate (measure it: that
    is the demo's baseline).
  * Movable by prompt tuning: `freq` is the `more` skill with the candidate
    set {a, b, c} left implicit. A soft prompt can learn to act like the
    missing instruction `more a b c: `, so the frozen model already holds
    the needed computation; prompt tuning only has to select it. Emulating
    a two-letter `more` alone already gives about 2/3 accuracy, so partial
    progress is visible too. This mirrors the claim of prompt tuning (steer
    a capable frozen model), not learning new computation.
  * Classification labels are single characters, hence single tokens of the
    byte vocabulary, which keeps rank classification exact and cheap.
  * Majorities are strict (no ties) by construction, so every label is
    well defined; held-out labels are balanced.

Train / validation / test splits draw from independent RNG streams and are
disjoint by construction: every possible input string belongs to exactly one
split through a fixed hash (`split_of`), so evaluation never scores an input
seen in training (short strings over three letters would otherwise repeat
often).
"""
from __future__ import annotations

import zlib
from typing import Callable, Optional

import numpy as np

LETTERS = "abcdefgh"
DIGITS = "0123456789"
PRETRAIN_TASKS = ("copy", "reverse", "sort", "upper", "count", "max", "add",
                  "more")
HELDOUT_TASK = "freq"
HELDOUT_LABELS = ("a", "b", "c")
TASKS = PRETRAIN_TASKS + (HELDOUT_TASK,)
SPLITS = ("train", "validation", "test")
# Longest input / target any generator produces (bytes, without EOS).
MAX_INPUT_CHARS = 32
MAX_TARGET_CHARS = 12

Example = dict[str, str]


def _letters(rng: np.random.Generator, low: int, high: int) -> str:
  length = rng.integers(low, high + 1)
  return "".join(rng.choice(list(LETTERS), size=length))


def _majority_string(rng: np.random.Generator, candidates: str,
                     distractors: str, winner: str) -> str:
  """Shuffled string where `winner` is strictly the most frequent candidate."""
  top = int(rng.integers(3, 7))
  counts = {c: int(rng.integers(1, top)) for c in candidates}
  counts[winner] = top
  for d in distractors:
    counts[d] = int(rng.integers(0, 3))
  chars = [c for c, n in counts.items() for _ in range(n)]
  return "".join(rng.permutation(chars))


def _copy(rng):
  s = _letters(rng, 3, 12)
  return f"copy: {s}", s


def _reverse(rng):
  s = _letters(rng, 3, 12)
  return f"reverse: {s}", s[::-1]


def _sort(rng):
  s = _letters(rng, 3, 12)
  return f"sort: {s}", "".join(sorted(s))


def _upper(rng):
  s = _letters(rng, 3, 12)
  return f"upper: {s}", s.upper()


def _count(rng):
  s = _letters(rng, 3, 12)
  letter = rng.choice(list(s) if rng.random() < 0.8 else list(LETTERS))
  return f"count {letter}: {s}", str(s.count(letter))


def _max(rng):
  s = "".join(rng.choice(list(DIGITS), size=rng.integers(3, 9)))
  return f"max: {s}", max(s)


def _add(rng):
  a, b = rng.integers(0, 100, size=2)
  return f"add: {a}+{b}", str(a + b)


def _more(rng):
  k = int(rng.integers(2, 4))
  chosen = rng.choice(list(LETTERS), size=k + 2, replace=False)
  candidates = "".join(sorted(chosen[:k]))
  distractors = "".join(chosen[k:]) if rng.random() < 0.5 else ""
  winner = str(rng.choice(list(candidates)))
  s = _majority_string(rng, candidates, distractors, winner)
  return f"more {' '.join(candidates)}: {s}", winner


def _freq(rng):
  winner = str(rng.choice(list(HELDOUT_LABELS)))
  s = _majority_string(rng, "".join(HELDOUT_LABELS), "", winner)
  return f"freq: {s}", winner


_GENERATORS: dict[str, Callable[[np.random.Generator], tuple[str, str]]] = {
    "copy": _copy, "reverse": _reverse, "sort": _sort, "upper": _upper,
    "count": _count, "max": _max, "add": _add, "more": _more, "freq": _freq,
}


def _check_task(task: str):
  if task not in _GENERATORS:
    raise ValueError(f"unknown synthetic task {task!r}; known: {TASKS}")


def examples(task: str, split: str, n: int, seed: int = 0) -> list[Example]:
  """`n` examples `{"inputs", "targets"}` of one task and split.

  Deterministic in `(task, split, seed)`; the first `k` examples of a larger
  request equal a request for `k`.
  """
  _check_task(task)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}.")
  rng = np.random.default_rng(
      [seed, SPLITS.index(split), zlib.crc32(task.encode("utf-8"))])
  out = []
  while len(out) < n:
    inputs, targets = _GENERATORS[task](rng)
    if split_of(inputs) == split:
      out.append({"inputs": inputs, "targets": targets})
  return out


def split_of(inputs: str) -> str:
  """The only split an input string may appear in (a fixed hash partition).

  80% of all possible inputs belong to `train`, 10% each to `validation` and
  `test`; generators reject draws of other splits, so the splits of a task
  never share an input, whatever the seeds.
  """
  bucket = zlib.crc32(inputs.encode("utf-8")) % 10
  return "validation" if bucket == 0 else "test" if bucket == 1 else "train"


def train_examples(task: str, n: int, seed: int = 0) -> list[Example]:
  return examples(task, "train", n, seed)


def eval_examples(task: str, n: int, seed: int = 0,
                  split: str = "validation") -> list[Example]:
  """Held-out examples (`validation` or `test` split)."""
  if split == "train":
    raise ValueError("eval_examples: split must be 'validation' or 'test'.")
  return examples(task, split, n, seed)


def label_strings(task: str) -> Optional[tuple[str, ...]]:
  """Candidate answers for rank classification, or None (generation task)."""
  _check_task(task)
  return HELDOUT_LABELS if task == HELDOUT_TASK else None


def mixture_examples(split: str, n: int, seed: int = 0,
                     tasks: tuple[str, ...] = PRETRAIN_TASKS
                     ) -> list[Example]:
  """`n` examples cycling through `tasks` (equal rates), each tagged `task`."""
  per_task = {t: examples(t, split, -(-n // len(tasks)), seed) for t in tasks}
  return [{**per_task[tasks[i % len(tasks)]][i // len(tasks)],
           "task": tasks[i % len(tasks)]} for i in range(n)]
