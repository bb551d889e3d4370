"""Host-side input pipeline: padded arrays, resumable batches, device prefetch.

Batches follow seqio's encoder-decoder feature-converter layout (unpacked):

  encoder_input_tokens   [B, T] int32
  decoder_input_tokens   [B, S] int32   targets shifted right, start id 0
  decoder_target_tokens  [B, S] int32
  decoder_loss_weights   [B, S] float32 1 on real target tokens incl. EOS

Pad id is 0 and EOS id is 1. Everything here is NumPy and grain (no
TensorFlow), so the trainer can run from arrays built by
`ptuning_jax.data.seqio.loading` ahead of time or directly from Python token
lists.

Dimension letters: N examples in a dataset, B (global) batch size, T input
length, S target length, C candidate answers.

Training batches come from grain `MapDataset` pipelines over example
indices (random access, so the position is one number: grain's iterator
state `next_index`, the global batch number): an epoch-by-epoch order,
batched within each epoch, repeated; a mixture selects each global example's
task with `select_from_datasets`. Iteration order is a pure function of
`(seed, epoch, position)`, so a run that saves `get_state()` in its checkpoint
and calls `set_state()` on restart sees exactly the batches an uninterrupted
run would have seen. On several hosts each process takes its contiguous
`B / process_count` slice of every global batch; the state is global and
identical on every host.

Three parts are not grain's, each for a measured reason: the per-epoch
permutation is numpy's (`epoch_order`; grain's `shuffle` costs about 1.4 ms
per index at N = 32 and reseeds epoch e with seed + e); the task of each
mixture example is sampled per example from the rates (`_TaskSampler`;
grain's `mix` interleaves deterministically with weights rounded to
integers); and a host's share is a contiguous slice of each global batch
(grain shards by striding over examples).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import sys
import zlib
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import grain
import jax
import numpy as np

PAD_ID = 0
EOS_ID = 1
# Per-example task feature [B] of multi-task methods (MPT, multitask prompts).
TASK_INDEX = "task_index"
FEATURE_KEYS = ("encoder_input_tokens", "decoder_input_tokens",
                "decoder_target_tokens", "decoder_loss_weights")


# ------------------------------------------------------------------ features


def pad_sequence(ids: Sequence[int], length: int, *, append_eos: bool,
                 name: str = "sequence") -> np.ndarray:
  """Truncates and pads one token-id list.

  With `append_eos`, the result always ends in EOS (a trailing EOS in `ids` is
  kept, not doubled; a too long sequence is cut to `length - 1` tokens first,
  like seqio's `append_eos_after_trim`). Without it, `ids` are only truncated.

  Args:
    ids: token ids.
    length: output length (T or S).
    append_eos: whether the result must end in EOS.
    name: used in error messages.

  Returns:
    [length] int32, zero padded.
  """
  if length < 1:
    raise ValueError(f"{name}: length must be >= 1, got {length}.")
  ids = np.asarray(ids, dtype=np.int64).reshape(-1)
  if ids.size and ids.min() < 0:
    raise ValueError(f"{name}: negative token id {ids.min()}.")
  if append_eos:
    if ids.size and ids[-1] == EOS_ID:
      ids = ids[:-1]
    ids = np.concatenate([ids[:length - 1], [EOS_ID]])
  else:
    ids = ids[:length]
  out = np.full([length], PAD_ID, dtype=np.int32)
  out[:ids.size] = ids
  return out


def target_features(targets: np.ndarray) -> dict[str, np.ndarray]:
  """Decoder features from padded targets.

  Args:
    targets: [..., S] int padded target ids.

  Returns:
    `decoder_target_tokens` [..., S] int32, `decoder_input_tokens` [..., S]
    int32 (shifted right, start id 0) and `decoder_loss_weights` [..., S]
    float32 (1 where the target is not pad).
  """
  targets = np.asarray(targets, dtype=np.int32)
  inputs = np.zeros_like(targets)
  inputs[..., 1:] = targets[..., :-1]
  return {
      "decoder_input_tokens": inputs,
      "decoder_target_tokens": targets,
      "decoder_loss_weights": (targets != PAD_ID).astype(np.float32),
  }


def convert_examples(examples: Sequence[Mapping[str, Sequence[int]]],
                     feature_lengths: Mapping[str, int], *,
                     append_eos_inputs: bool = True,
                     append_eos_targets: bool = True) -> dict[str, np.ndarray]:
  """Token-id examples -> padded encoder-decoder arrays.

  Args:
    examples: N dicts with `inputs` and `targets` token-id lists.
    feature_lengths: `{"inputs": T, "targets": S}`.
    append_eos_inputs: end every input in EOS (T5 convention).
    append_eos_targets: end every target in EOS.

  Returns:
    The four `FEATURE_KEYS` arrays, [N, T] / [N, S].
  """
  for key in ("inputs", "targets"):
    if key not in feature_lengths:
      raise KeyError(f"feature_lengths lacks {key!r}: {dict(feature_lengths)}")
  num = len(examples)
  inputs = np.zeros([num, feature_lengths["inputs"]], np.int32)
  targets = np.zeros([num, feature_lengths["targets"]], np.int32)
  for i, ex in enumerate(examples):
    for key in ("inputs", "targets"):
      if key not in ex:
        raise KeyError(f"example {i} has no {key!r} field: {sorted(ex)}")
    inputs[i] = pad_sequence(ex["inputs"], feature_lengths["inputs"],
                             append_eos=append_eos_inputs,
                             name=f"example {i} inputs")
    targets[i] = pad_sequence(ex["targets"], feature_lengths["targets"],
                              append_eos=append_eos_targets,
                              name=f"example {i} targets")
  return {"encoder_input_tokens": inputs, **target_features(targets)}


def encode_examples(examples: Sequence[Mapping[str, str]], vocab: Any,
                    feature_lengths: Mapping[str, int],
                    **kwargs) -> "ArrayDataset":
  """Text examples -> `ArrayDataset`; the examples become the metadata.

  Args:
    examples: N dicts with `inputs` and `targets` strings.
    vocab: anything with `encode(str) -> list[int]` (see `ptuning_jax.data.vocab`).
    feature_lengths: `{"inputs": T, "targets": S}`.
    **kwargs: passed to `convert_examples`.
  """
  tokenized = [{"inputs": vocab.encode(ex["inputs"]),
                "targets": vocab.encode(ex["targets"])} for ex in examples]
  arrays = convert_examples(tokenized, feature_lengths, **kwargs)
  return ArrayDataset(arrays, [dict(ex) for ex in examples])


# ------------------------------------------------------------------- dataset


@dataclasses.dataclass
class ArrayDataset:
  """Examples as aligned arrays plus optional per-example metadata.

  Attributes:
    arrays: name -> [N, ...] arrays, all with the same N.
    metadata: optional list of N dicts (pretokenized text, labels, ...) for
      metrics; never batched.
  """
  arrays: dict[str, np.ndarray]
  metadata: Optional[list[dict[str, Any]]] = None

  def __post_init__(self):
    if not self.arrays:
      raise ValueError("ArrayDataset needs at least one array.")
    self.arrays = {k: np.asarray(v) for k, v in self.arrays.items()}
    sizes = {k: v.shape[0] if v.ndim else None for k, v in self.arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
      raise ValueError(f"ArrayDataset arrays disagree on N: {sizes}")
    if self.metadata is not None and len(self.metadata) != len(self):
      raise ValueError(f"ArrayDataset metadata has {len(self.metadata)} "
                       f"entries for {len(self)} examples.")

  def __len__(self) -> int:
    return next(iter(self.arrays.values())).shape[0]

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays gathered at `indices` ([B] int) -> [B, ...] each."""
    return {k: v[indices] for k, v in self.arrays.items()}

  def subset(self, indices: np.ndarray) -> "ArrayDataset":
    """A new dataset of the examples at `indices` (metadata included)."""
    indices = np.asarray(indices, dtype=np.int64)
    meta = (None if self.metadata is None else
            [self.metadata[i] for i in indices])
    return ArrayDataset(self.take(indices), meta)


def _host_slice(batch_size: int, process_index: int,
                process_count: int) -> slice:
  """The contiguous slice of a global batch that belongs to one process."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in "
                     f"[0, process_count={process_count}).")
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} is not divisible by "
                     f"process_count={process_count}.")
  per_host = batch_size // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)


def epoch_order(num_examples: int, seed: Union[int, Sequence[int]], epoch: int,
                shuffle: bool = True) -> np.ndarray:
  """[N] example order of one epoch.

  `np.random.default_rng([*seed, epoch]).permutation(N)` (`seed` an int or
  a flat sequence of ints), or `arange(N)` without shuffling. The entropy
  is flat: numpy 2.5 refuses nested seed sequences (numpy 2.4 flattened
  them to the same stream).
  """
  if not shuffle:
    return np.arange(num_examples)
  entropy = [int(s) for s in np.atleast_1d(seed)] + [int(epoch)]
  return np.random.default_rng(entropy).permutation(num_examples)


class _EpochPermutation:
  """grain `map_with_index` function: position `g` of an endless example
  order -> `epoch_order(N, seed, g // N)[g % N]`.

  Not grain's `shuffle`: its per-index permutation costs about 1.4 ms per
  index at N = 32 (measured, 0.8 us amortized for a numpy permutation), and
  it reseeds epoch e with seed + e, so seeds s and s + 1 share epochs.
  """

  def __init__(self, num_examples: int, seed: Union[int, Sequence[int]]):
    self.num_examples, self.seed = num_examples, seed
    self._orders: dict[int, np.ndarray] = {}  # the last two epochs used

  def __call__(self, position: int, index: int) -> int:
    epoch = position // self.num_examples
    if epoch not in self._orders:
      self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
      self._orders[epoch] = epoch_order(self.num_examples, self.seed, epoch)
    return int(self._orders[epoch][index])


def _order(num_examples: int, seed: Union[int, Sequence[int]],
           shuffle: bool) -> grain.MapDataset:
  """The example order as a grain dataset of N indices whose position
  `e * N + i` (as `batch` after `repeat` and `repeat` ask for it) is
  example `epoch_order(N, seed, e)[i]`."""
  order = grain.MapDataset.range(num_examples)  # position g -> g % N
  return order.map_with_index(_EpochPermutation(num_examples, seed)) if shuffle else order


def _iterate(batches: grain.MapDataset) -> grain.DatasetIterator:
  # In-memory arrays: no reader threads, no prefetch buffer (grain's advice);
  # the position is grain's `next_index`, the global batch number.
  return batches.to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).__iter__()


def _check_state(state: Mapping[str, Any], expected: Mapping[str, Any],
                 where: str) -> Mapping[str, Any]:
  """`state`'s grain iterator state, once its other keys match `expected`."""
  for key in list(expected) + ["iterator"]:
    if key not in state:
      raise KeyError(f"{where}: state lacks {key!r}: {dict(state)}")
  for key, value in expected.items():
    if state[key] != value:
      raise ValueError(f"{where}: state was saved with {key}={state[key]}, "
                       f"this iterator has {key}={value}.")
  return state["iterator"]


class BatchIterator:
  """Deterministic, resumable, per-host-sharded batches of an `ArrayDataset`.

  A grain pipeline over example indices: `range(N)`, shuffled per epoch
  (`epoch_order`), batched within each epoch, repeated. With
  `drop_remainder` the last `N % B` examples of each epoch are skipped (every
  batch is full); otherwise the last batch of each epoch is smaller. Each
  process gets rows `[i * B / P, (i + 1) * B / P)` of every global batch and
  gathers only those. Iterates forever unless `num_epochs` is set. The
  position (`get_state`) is the global batch number, the same on every host.
  """

  def __init__(self, dataset: ArrayDataset, batch_size: int, seed: int,
               shuffle: bool = True, drop_remainder: bool = True,
               process_index: int = 0, process_count: int = 1,
               num_epochs: Optional[int] = None):
    self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
    self.shuffle, self.drop_remainder = shuffle, drop_remainder
    self.num_epochs = num_epochs
    self.process_index, self.process_count = process_index, process_count
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    self._slice = _host_slice(batch_size, process_index, process_count)
    num = len(dataset)
    if drop_remainder and num < batch_size:
      raise ValueError(f"dataset has {num} examples, fewer than batch_size="
                       f"{batch_size}, and drop_remainder=True.")
    if not drop_remainder and (num % batch_size) % process_count:
      raise ValueError(
          f"the last batch of each epoch has {num % batch_size} examples, not "
          f"divisible by process_count={process_count}; use drop_remainder.")
    batches = _order(num, seed, shuffle).batch(  # [B] indices each
        batch_size, drop_remainder=drop_remainder, batch_fn=np.asarray)
    self._batches_per_epoch = len(batches)
    self._batches = batches.repeat(num_epochs).map(self._local_batch)
    self._iterator = _iterate(self._batches)

  @property
  def batches_per_epoch(self) -> int:
    return self._batches_per_epoch

  def _local_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """This host's rows of a global batch of example indices [B]."""
    if indices.size == self.batch_size:
      local = indices[self._slice]  # [B / P]
    else:  # the short last batch of an epoch (drop_remainder=False)
      local = np.split(indices, self.process_count)[self.process_index]
    return self.dataset.take(local)

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def _expected_state(self) -> dict[str, Any]:
    return {"seed": int(self.seed), "num_examples": len(self.dataset),
            "batch_size": int(self.batch_size)}

  def get_state(self) -> dict[str, Any]:
    """JSON-able position: seed, sizes and grain's iterator state."""
    return {**self._expected_state(), "iterator": self._iterator.get_state()}

  def set_state(self, state: Mapping[str, Any]):
    """Resumes at a position saved by `get_state` (of any host), or by the
    pre-grain pipeline (`{seed, epoch, index, num_examples}`, same order)."""
    where = "BatchIterator.set_state"
    if "iterator" not in state and "epoch" in state:
      state = self._from_legacy(state, where)
    self._iterator.set_state(dict(_check_state(state, self._expected_state(), where)))

  def _from_legacy(self, state: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The state of the pre-grain BatchIterator (epoch, index within it)."""
    epoch, index = int(state["epoch"]), int(state["index"])
    if epoch < 0 or index < 0 or index % self.batch_size:
      raise ValueError(f"{where}: saved epoch={epoch}, index={index} is not a "
                       f"batch boundary of batch_size={self.batch_size}.")
    position = epoch * self.batches_per_epoch + index // self.batch_size
    return {"seed": state["seed"], "num_examples": state["num_examples"],
            "batch_size": self.batch_size, "iterator": {"next_index": position}}


# ------------------------------------------------------------------- mixture

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64 finalizer on a uint64 array (wrapping arithmetic)."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def example_uniforms(seed: int, counters: np.ndarray) -> np.ndarray:
  """[K] floats in [0, 1), a fixed hash of `(seed, counter)` per example.

  Counter-based (not a sequential RNG), so the value for a global example
  number does not depend on batch size or on where a run was resumed.
  """
  with np.errstate(over="ignore"):
    key = _mix64(np.asarray([seed], dtype=np.uint64))
    x = _mix64(key + np.asarray(counters, dtype=np.uint64) * _GOLDEN)
  return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class _TaskSampler(grain.transforms.DatasetSelectionMap):
  """grain selection map: global example `g` -> (task `t`, position `j`).

  `t` is drawn from the normalized rates with `example_uniforms(seed, g)`
  (per-example sampling, as seqio mixtures sample); `j` is the number of
  earlier examples of task `t`, so `t` supplies the next element of its own
  stream. Pure in `g`: the per-task counts are memoized per chunk of
  examples, and resuming at `g` recomputes them (vectorized) up to `g`.
  """
  CHUNK = 4096

  def __init__(self, cdf: np.ndarray, seed: int):
    self._cdf, self._seed = cdf, seed
    self._before = np.zeros([1, cdf.size], np.int64)  # [chunks, tasks] counts
    self._chunk, self._tasks, self._ranks = -1, None, None

  def __len__(self) -> int:
    return sys.maxsize

  def tasks(self, counters: np.ndarray) -> np.ndarray:
    """[K] task indices of global example numbers."""
    task = np.searchsorted(self._cdf, example_uniforms(self._seed, counters),
                           side="right")
    return np.minimum(task, self._cdf.size - 1)  # guards rounding

  def _chunk_tasks(self, chunk: int) -> np.ndarray:
    return self.tasks(np.arange(chunk * self.CHUNK, (chunk + 1) * self.CHUNK))

  def _load(self, chunk: int):
    while len(self._before) <= chunk:  # counts before each chunk
      counts = np.bincount(self._chunk_tasks(len(self._before) - 1),
                           minlength=self._cdf.size)
      self._before = np.concatenate([self._before, self._before[-1:] + counts])
    self._tasks = self._chunk_tasks(chunk)  # [CHUNK]
    self._ranks = np.zeros(self.CHUNK, np.int64)  # rank within its task
    for t in range(self._cdf.size):
      rows = self._tasks == t
      self._ranks[rows] = np.arange(rows.sum())
    self._chunk = chunk

  def counts_before(self, index: int) -> np.ndarray:
    """[tasks] examples of each task among global examples [0, index)."""
    chunk, i = divmod(index, self.CHUNK)
    if chunk != self._chunk:
      self._load(chunk)
    return self._before[chunk] + np.bincount(self._tasks[:i], minlength=self._cdf.size)

  def __getitem__(self, index: int) -> tuple[int, int]:
    chunk, i = divmod(index, self.CHUNK)
    if chunk != self._chunk:
      self._load(chunk)
    task = int(self._tasks[i])
    return task, int(self._before[chunk, task] + self._ranks[i])


def _stack_tasks(examples: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
  tasks, indices = zip(*examples)
  return np.asarray(tasks, np.int64), np.asarray(indices, np.int64)


class MixtureIterator:
  """Deterministic, resumable batches sampled from several datasets.

  A grain pipeline: each task is an endless stream of its example indices,
  shuffled per epoch (seeded by `seed` and the task name, so adding a task
  does not reorder the others); `grain.MapDataset.select_from_datasets` with
  `_TaskSampler` draws the task of global example number `g` from the
  normalized `rates` with `example_uniforms(seed, g)`, and that task supplies
  its next example; then global batches of B, of which each process gathers
  its contiguous `B / P` rows. All datasets must have the same array names,
  trailing shapes and dtypes. With `task_index` (a sequence of task names
  naming every dataset, in the order a method indexes them; names without a
  dataset keep their place) batches carry a `task_index` [B / P] int32
  array: each example's task's position in it.
  """

  def __init__(self, datasets: Mapping[str, ArrayDataset],
               rates: Mapping[str, float], batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1,
               task_index: Optional[Sequence[str]] = None):
    if set(datasets) != set(rates):
      raise ValueError(f"MixtureIterator: datasets {sorted(datasets)} and "
                       f"rates {sorted(rates)} name different tasks.")
    self.task_names = tuple(sorted(datasets))
    if not self.task_names:
      raise ValueError("MixtureIterator needs at least one dataset.")
    rate_values = np.array([float(rates[n]) for n in self.task_names])
    if (rate_values < 0).any() or rate_values.sum() <= 0:
      raise ValueError(f"MixtureIterator: rates must be >= 0 with a positive "
                       f"sum, got {dict(rates)}.")
    _check_compatible(datasets, self.task_names)
    self.datasets = {n: datasets[n] for n in self.task_names}
    self.rates = {n: float(rates[n]) for n in self.task_names}
    self.batch_size, self.seed = batch_size, seed
    self.task_index = None if task_index is None else tuple(task_index)
    if self.task_index is not None:
      check_task_order(self.task_index, self.task_names, "MixtureIterator task_index")
      self._index_of = np.array([self.task_index.index(n) for n in self.task_names],
                                np.int32)
    self._slice = _host_slice(batch_size, process_index, process_count)
    self._sampler = _TaskSampler(np.cumsum(rate_values / rate_values.sum()), seed)
    streams = [_order(len(self.datasets[n]), _task_seed(seed, n), shuffle=True)
               .repeat().map(functools.partial(_tag, t))
               for t, n in enumerate(self.task_names)]
    mixed = grain.MapDataset.select_from_datasets(streams, self._sampler)
    self._iterator = _iterate(mixed.batch(batch_size, batch_fn=_stack_tasks)
                              .map(self._local_batch))

  def sample_tasks(self, counters: np.ndarray) -> np.ndarray:
    """[K] task indices (into `task_names`) of global example numbers."""
    return self._sampler.tasks(counters)

  @property
  def examples_seen(self) -> int:
    return self._iterator.get_state()["next_index"] * self.batch_size

  def _local_batch(self, batch: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """This host's rows of a global batch of (task [B], example index [B])."""
    tasks, indices = (x[self._slice] for x in batch)  # [B / P]
    first = self.datasets[self.task_names[0]].arrays
    out = {k: np.empty((indices.size,) + v.shape[1:], v.dtype)
           for k, v in first.items()}
    for t, name in enumerate(self.task_names):
      rows = np.flatnonzero(tasks == t)
      if rows.size:
        for k, v in self.datasets[name].take(indices[rows]).items():
          out[k][rows] = v
    if self.task_index is not None:
      out[TASK_INDEX] = self._index_of[tasks]
    return out

  def __iter__(self) -> "MixtureIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def _expected_state(self) -> dict[str, Any]:
    return {"seed": int(self.seed), "batch_size": int(self.batch_size),
            "tasks": {n: len(d) for n, d in self.datasets.items()}}

  def get_state(self) -> dict[str, Any]:
    """JSON-able position: seed, sizes and grain's iterator state."""
    return {**self._expected_state(), "iterator": self._iterator.get_state()}

  def set_state(self, state: Mapping[str, Any]):
    """Resumes at a position saved by `get_state` (of any host), or by the
    pre-grain pipeline (`examples_seen` and per-task streams, same order)."""
    where = "MixtureIterator.set_state"
    if "iterator" not in state and "examples_seen" in state:
      state = self._from_legacy(state, where)
    self._iterator.set_state(dict(_check_state(state, self._expected_state(), where)))

  def _from_legacy(self, state: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The state of the pre-grain MixtureIterator; its per-task stream
    positions must be the ones the sampler implies."""
    seen = int(state["examples_seen"])
    if seen < 0 or seen % self.batch_size:
      raise ValueError(f"{where}: saved examples_seen={seen} is not a batch "
                       f"boundary of batch_size={self.batch_size}.")
    tasks = state["tasks"]
    if set(tasks) != set(self.task_names):
      raise ValueError(f"{where}: state tasks {sorted(tasks)} differ from "
                       f"{list(self.task_names)}.")
    counts = self._sampler.counts_before(seen)
    for t, name in enumerate(self.task_names):
      sub = tasks[name]
      taken = int(sub["epoch"]) * int(sub["num_examples"]) + int(sub["index"])
      if taken != counts[t]:
        raise ValueError(f"{where}: task {name!r} had handed out {taken} examples, "
                         f"the mixture's sampling gives {counts[t]}.")
    return {"seed": state["seed"], "batch_size": self.batch_size,
            "tasks": {n: int(sub["num_examples"]) for n, sub in tasks.items()},
            "iterator": {"next_index": seen // self.batch_size}}


def _tag(task: int, index: int) -> tuple[int, int]:
  return task, index


def check_task_order(order: Sequence[str], names: Sequence[str], owner: str) -> None:
  """A task numbering `order` must name every task of `names` once (it may
  name more: a method's numbering can include tasks without data in a
  split); the error names `owner`, the setting that gave it."""
  duplicates = sorted({n for n in order if list(order).count(n) > 1})
  missing = sorted(set(names) - set(order))
  if duplicates or missing:
    raise ValueError(
        f"{owner}={list(order)} must list every mixture task ({sorted(names)}) once: "
        f"missing {missing}, repeated {duplicates}.")


def _task_seed(seed: int, name: str) -> list[int]:
  return [seed, zlib.crc32(name.encode("utf-8"))]


def _check_compatible(datasets: Mapping[str, ArrayDataset],
                      names: Sequence[str]):
  """All datasets must batch together: same keys, trailing shapes, dtypes."""
  ref_name = names[0]
  ref = {k: (v.shape[1:], v.dtype)
         for k, v in datasets[ref_name].arrays.items()}
  for name in names[1:]:
    got = {k: (v.shape[1:], v.dtype) for k, v in datasets[name].arrays.items()}
    if got != ref:
      raise ValueError(f"MixtureIterator: dataset {name!r} arrays {got} do "
                       f"not match {ref_name!r} arrays {ref}.")


# ---------------------------------------------------------------- evaluation


def eval_batches(dataset: ArrayDataset, batch_size: int,
                 process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every example exactly once, in order; the last batch is zero padded.

  Padding rows are all pad ids (so their `decoder_loss_weights` are 0) and
  have `example_mask` False. On several hosts each process gets its
  contiguous slice of every global batch; concatenating the hosts' slices in
  process order restores the global batch.

  Yields:
    The dataset's arrays [B / P, ...] plus `example_mask` [B / P] bool.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  host = _host_slice(batch_size, process_index, process_count)
  num = len(dataset)
  for start in range(0, num, batch_size):
    indices = np.arange(start, min(start + batch_size, num))
    batch = dataset.take(indices)
    real = indices.size
    if real < batch_size:
      batch = {k: np.concatenate(
          [v, np.zeros((batch_size - real,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    batch["example_mask"] = np.arange(batch_size) < real
    yield {k: v[host] for k, v in batch.items()}


# ------------------------------------------------------------------ prefetch


def _to_device(batch: Any, sharding: Any) -> Any:
  if sharding is None:
    return jax.device_put(batch)
  if jax.process_count() > 1:
    # Each host holds only its slice; assemble the global array.
    if isinstance(sharding, jax.sharding.Sharding):
      return jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    return jax.tree.map(jax.make_array_from_process_local_data, sharding,
                        batch)
  return jax.device_put(batch, sharding)


def prefetch_to_device(iterator: Iterator[Any], size: int = 2,
                       sharding: Any = None) -> Iterator[Any]:
  """Keeps `size` batches transferred ahead of use.

  `jax.device_put` is asynchronous, so the copies of the next batches overlap
  with the current step; nothing here blocks on the device.

  Args:
    iterator: yields pytrees of host arrays.
    size: number of batches in flight (>= 1).
    sharding: None (default device), one `jax.sharding.Sharding` for every
      leaf, or a pytree of shardings matching the batch. On several processes
      each host's arrays are its local slice of the global batch.

  Yields:
    The same pytrees as `jax.Array`s.
  """
  if size < 1:
    raise ValueError(f"prefetch size must be >= 1, got {size}.")
  queue = collections.deque()
  iterator = iter(iterator)

  def enqueue(count: int):
    for batch in iterator:
      queue.append(_to_device(batch, sharding))
      count -= 1
      if not count:
        return

  enqueue(size)
  while queue:
    batch = queue.popleft()
    enqueue(1)  # Refill before handing out, so `size` stay in flight.
    yield batch
