"""The MPT/DePT split protocol and k-shot sampling, as index arithmetic.

The 23-dataset benchmark (ATTEMPT -> MPT -> DePT lineage, DePT `src/tasks.py`
`AbstractTask.get` with `split_validation_test=True`) does not use the official
splits directly:

* `SMALL` datasets (no labelled test split, < 10k training examples): train is
  the official train split; the official validation split is shuffled and cut
  in half, the first half is the validation split (model selection) and the
  second half the test split (reported).
* `LARGE` datasets: 1,000 shuffled training examples are held out as the
  validation split, the rest is the train split, and the official validation
  (Yelp: test) split is the test split. Yelp's train split is then capped at
  its first 100,000 examples (DePT `train.py`).
* `OFFICIAL` datasets map task splits to raw splits one to one (MNLI:
  validation = validation_mismatched, test = validation_matched; PAWS: the
  official train/validation/test).

Every shuffle is `torch.randperm(n, generator=torch.Generator().manual_seed(
42))`, whatever the run seed. `torch_randperm` replays it exactly without
torch (CPU Mersenne Twister, Fisher-Yates with `random() % (n - i)`), so the
split membership is DePT's whenever the raw examples are read in DePT's (the
official files') order.

Few-shot (`k_shot_positions`): `per_class` draws k examples of every class
from a seeded shuffle of the train split (what the benchmark describes);
`dept` replays DePT's `train.py` exactly: k is the *total*, `k // C` per class
with the last slot open to any class, over `Dataset.shuffle(seed)` =
`np.random.default_rng(seed).permutation(n)`. DePT's open slot only opens when
C * (k // C) == k - 1, so e.g. k=32 with 3 classes gives 30 examples.

Positions are 0-based indices into a raw split in canonical order.
`ProtocolSource` is the seqio `DataSource` that reads a raw dataset
(`ptuning_jax.data.seqio.sources`) through a protocol. Dimension letters: N raw
examples in a split, K selected examples.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from ptuning_jax.data.seqio import sources

SMALL = "small"
LARGE = "large"
OFFICIAL = "official"
KINDS = (SMALL, LARGE, OFFICIAL)
TASK_SPLITS = ("train", "validation", "test")
SPLIT_SEED = 42
LARGE_HOLDOUT = 1000
FEW_SHOT_KS = (4, 16, 32)
FEW_SHOT_MODES = ("per_class", "dept")


def torch_randperm(n: int, seed: int = SPLIT_SEED) -> np.ndarray:
  """`torch.randperm(n, generator=torch.Generator().manual_seed(seed))`.

  Args:
    n: permutation size (below 2**32 / 20, torch's small-n code path).
    seed: the generator seed.

  Returns:
    perm: [N] int64, identical to torch's CPU result.
  """
  if n < 0 or n >= (2**32 - 1) // 20:
    raise ValueError(f"torch_randperm: n={n} is outside "
                     f"[0, {(2**32 - 1) // 20}).")
  # RandomState(seed) seeds MT19937 with init_genrand(seed) like torch's CPU
  # generator; randint over the full uint32 range returns the raw outputs.
  raw = np.random.RandomState(seed).randint(
      0, 2**32, size=max(n - 1, 0), dtype=np.uint32).tolist()
  perm = list(range(n))
  for i in range(n - 1):
    z = i + raw[i] % (n - i)
    perm[i], perm[z] = perm[z], perm[i]
  return np.asarray(perm, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Selection:
  """Which raw examples make one task split.

  Attributes:
    raw_split: the raw (official) split to read.
    positions: [K] positions into `raw_split` in protocol order, or None for
      the whole raw split in its own order.
  """
  raw_split: str
  positions: Optional[np.ndarray] = None

  def size(self, raw_size: int) -> int:
    return raw_size if self.positions is None else len(self.positions)


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How a task's train/validation/test splits derive from the raw splits.

  Attributes:
    kind: `SMALL`, `LARGE` or `OFFICIAL`.
    raw_splits: for `OFFICIAL`, task split -> raw split (any names, e.g.
      Lester's MNLI `validation_matched`); for `SMALL`, needs
      "train" and "validation" (the split cut in half); for `LARGE`, "train"
      and "test" (the raw split used as test).
    train_cap: keep only the first `train_cap` train examples (Yelp: 100k).
    seed: the shuffle seed (42 for every dataset in the benchmark).
  """
  kind: str
  raw_splits: Mapping[str, str]
  train_cap: Optional[int] = None
  seed: int = SPLIT_SEED

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Protocol.kind={self.kind!r} is not one of {KINDS}.")
    needed = {SMALL: ("train", "validation"), LARGE: ("train", "test"),
              OFFICIAL: ()}[self.kind]
    missing = [s for s in needed if s not in self.raw_splits]
    if missing:
      raise ValueError(f"Protocol({self.kind}).raw_splits="
                       f"{dict(self.raw_splits)} lacks {missing}.")
    if self.kind == OFFICIAL and not self.raw_splits:
      raise ValueError("Protocol(official) needs at least one raw split.")

  @property
  def task_splits(self) -> tuple[str, ...]:
    """train/validation/test; `OFFICIAL` protocols name their own splits."""
    if self.kind == OFFICIAL:
      return tuple(self.raw_splits)
    return TASK_SPLITS

  def raw_split_of(self, split: str) -> str:
    """The raw split that `split` reads (before any selection)."""
    self._check_split(split)
    if self.kind == SMALL:
      return self.raw_splits["train" if split == "train" else "validation"]
    if self.kind == LARGE:
      return self.raw_splits["test" if split == "test" else "train"]
    return self.raw_splits[split]

  def selection(self, split: str, raw_size: int) -> Selection:
    """The raw split and positions of task split `split`.

    Args:
      split: one of `task_splits`.
      raw_size: number of examples of `self.raw_split_of(split)`.

    Returns:
      the `Selection`; positions are in DePT's order (shuffled order for the
      held-out parts).
    """
    raw = self.raw_split_of(split)
    if raw_size < 0:
      raise ValueError(f"raw_size={raw_size} for raw split {raw!r} is "
                       "negative.")
    positions = None
    if self.kind == SMALL and split != "train":
      perm = torch_randperm(raw_size, self.seed)
      half = raw_size // 2
      positions = perm[:half] if split == "validation" else perm[half:]
    elif self.kind == LARGE and split != "test":
      if raw_size <= LARGE_HOLDOUT:
        raise ValueError(f"raw split {raw!r} has {raw_size} examples; the "
                         f"large-dataset protocol holds out {LARGE_HOLDOUT}.")
      perm = torch_randperm(raw_size, self.seed)
      positions = (perm[:LARGE_HOLDOUT] if split == "validation"
                   else perm[LARGE_HOLDOUT:])
    if split == "train" and self.train_cap is not None:
      if positions is None:
        positions = np.arange(raw_size, dtype=np.int64)
      positions = positions[:self.train_cap]
    return Selection(raw, positions)

  def _check_split(self, split: str):
    if split not in self.task_splits:
      raise ValueError(f"split {split!r} is not one of {self.task_splits}.")


def k_shot_positions(labels: Sequence, k: int, seed: int,
                     mode: str = "per_class",
                     classes: Optional[Sequence] = None) -> np.ndarray:
  """Indices of a k-shot training subset.

  Args:
    labels: [N] class of every train example, in train-split order.
    k: shots; `per_class`: k per class; `dept`: k in total.
    seed: the run seed of the draw.
    mode: `per_class` or `dept` (see the module docstring).
    classes: the classes (default: sorted unique labels); every class must
      have enough examples for `per_class`.

  Returns:
    idx: [K] indices into `labels`, in draw order.
  """
  if mode not in FEW_SHOT_MODES:
    raise ValueError(f"k-shot mode {mode!r} is not one of {FEW_SHOT_MODES}.")
  if k < 1:
    raise ValueError(f"k={k} must be positive.")
  labels = list(labels)
  classes = sorted(set(labels)) if classes is None else list(classes)
  if not classes:
    raise ValueError("k-shot sampling got no labels.")
  order = np.random.default_rng(seed).permutation(len(labels))
  if mode == "dept":
    return _dept_k_shot(labels, order, k, classes)
  counts = {c: 0 for c in classes}
  picked = []
  for i in order:
    c = labels[i]
    if c in counts and counts[c] < k:
      counts[c] += 1
      picked.append(int(i))
  short = {c: n for c, n in counts.items() if n < k}
  if short:
    raise ValueError(f"k-shot sampling with k={k}: classes {short} have too "
                     f"few examples (of {len(labels)}).")
  return np.asarray(picked, dtype=np.int64)


def _dept_k_shot(labels, order, k, classes) -> np.ndarray:
  """DePT `train.py`: k total, k // C per class, last slot for any class."""
  counts = {c: 0 for c in classes}
  per_class = k // len(classes)
  picked = []
  for i in order:
    if sum(counts.values()) == k:
      break
    c = labels[i]
    if c not in counts:
      raise ValueError(f"label {c!r} is not one of the classes {classes}.")
    if counts[c] < per_class or sum(counts.values()) == k - 1:
      counts[c] += 1
      picked.append(int(i))
  return np.asarray(picked, dtype=np.int64)


# ------------------------------------------------------------ seqio source


@dataclasses.dataclass(frozen=True)
class FewShot:
  """A k-shot train split: see `k_shot_positions`.

  Attributes:
    k: shots (per class for `per_class`, in total for `dept`).
    seed: the draw's seed.
    mode: `per_class` or `dept`.
    label_fn: raw label -> class (e.g. STS-B score -> 0/1), or None.
  """
  k: int
  seed: int
  mode: str = "per_class"
  label_fn: Optional[Callable[[Any], Any]] = None

  def __post_init__(self):
    if self.mode not in FEW_SHOT_MODES:
      raise ValueError(f"FewShot.mode={self.mode!r} is not one of "
                       f"{FEW_SHOT_MODES}.")


class ProtocolSource(seqio.DataSource):
  """A raw dataset read through a split protocol (and optional k-shot).

  The backend (TFDS or local files) is resolved at every `get_dataset` from
  `sources.current_config()`. File-level shuffling is never applied (the
  protocol needs the canonical order); seqio's Task shuffles examples.
  """

  def __init__(self, raw_name: str, protocol: Protocol,
               few_shot: Optional[FewShot] = None, task_name: str = ""):
    self._raw = sources.raw_dataset(raw_name)
    for split in protocol.task_splits:
      raw_split = protocol.raw_split_of(split)
      if raw_split not in self._raw.local:
        raise ValueError(f"task {task_name!r}: protocol split {split!r} reads "
                         f"{raw_split!r}, which {raw_name} lacks.")
    self._protocol = protocol
    self._few_shot = few_shot
    self._task_name = task_name
    super().__init__(splits=protocol.task_splits, caching_permitted=True)

  @property
  def raw(self) -> sources.RawDataset:
    return self._raw

  @property
  def protocol(self) -> Protocol:
    return self._protocol

  @property
  def few_shot(self) -> Optional[FewShot]:
    return self._few_shot

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def __repr__(self):
    return (f"ProtocolSource({self._raw.name}, {self._protocol.kind}, "
            f"few_shot={self._few_shot})")

  def selection(self, split: str,
                cfg: Optional[sources.SourceConfig] = None) -> Selection:
    """Which raw examples (canonical positions) make task split `split`."""
    if split not in self.splits:
      raise ValueError(f"task {self._task_name!r} has no split {split!r}; it "
                       f"has {list(self.splits)}.")
    raw_split = self._protocol.raw_split_of(split)
    few_shot = self._few_shot if split == "train" else None
    if (self._protocol.kind == OFFICIAL and few_shot is None and
        (split != "train" or self._protocol.train_cap is None)):
      return Selection(raw_split)  # the whole raw split: no size needed.
    index = sources.raw_index(self._raw, raw_split, cfg, self._task_name)
    sel = self._protocol.selection(split, index.size)
    if few_shot is None:
      return sel
    fs = self._few_shot
    labels = sources.raw_index(self._raw, raw_split, cfg, self._task_name,
                               want_labels=True).labels
    train = (np.arange(index.size) if sel.positions is None
             else sel.positions)
    train_labels = [fs.label_fn(x) if fs.label_fn else x.item()
                    for x in labels[train]]
    picked = k_shot_positions(train_labels, fs.k, fs.seed, fs.mode)
    return Selection(raw_split, train[picked])

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length: Optional[Mapping[str, int]] = None,
                  use_cached: bool = False,
                  num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del shuffle, seed, sequence_length, use_cached, num_epochs
    cfg = sources.current_config()
    sel = self.selection(split, cfg)
    ds = sources.read_raw(self._raw, sel.raw_split, cfg, self._task_name)
    if sel.positions is not None:
      index = sources.raw_index(self._raw, sel.raw_split, cfg, self._task_name)
      mask = np.zeros(index.size, dtype=bool)
      mask[sel.positions] = True
      if index.canon_of_stream is not None:
        mask = mask[index.canon_of_stream]
      ds = sources.select(ds, mask)
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds

  def num_input_examples(self, split: str) -> Optional[int]:
    cfg = sources.current_config()
    sel = self.selection(split, cfg)
    if sel.positions is not None:
      return len(sel.positions)
    return sources.raw_index(self._raw, sel.raw_split, cfg, self._task_name,
                             need_order=False).size
