"""Hugging Face checkpoint tensors: files, layouts, placement, import, export.

Shared by every family's loader (`hf/t5.py`, `hf/bert.py`): the safetensors
source over a single file or an index of shards (every tensor a shard holds
must be the one the index maps to it), the per-tensor layout conversions
between HF's `Linear` layout and our kernels, the strict name / shape check
that lists every culprit, reading a parameter tree straight onto its target
shardings, and writing one back (single file or shards + index).

Layout kinds ([...] HF <-> ours; H model dim, N heads, D head dim):
  "copy"              same layout,
  "linear"            [out, in]  <-> [in, out],
  "linear_heads"      [N*D, H]   <-> [H, N, D],
  "linear_out_heads"  [H, N*D]   <-> [N, D, H],
  "bias_heads"        [N*D]      <-> [N, D].
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
from flax import traverse_util
import ml_dtypes  # noqa: F401  pylint: disable=unused-import (registers bfloat16 with numpy)
import numpy as np
from safetensors import safe_open

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
UNSUPPORTED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json",
                       "tf_model.h5", "flax_model.msgpack")
KINDS = ("copy", "linear", "linear_heads", "linear_out_heads", "bias_heads")


class CheckpointMismatchError(ValueError):
  """A checkpoint's tensors do not match the model (lists every culprit)."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One parameter <-> one HF tensor.

  Attributes:
    path: key path into our params tree.
    hf_name: full HF tensor name (prefix included).
    kind: layout conversion, one of KINDS.
  """
  path: tuple[str, ...]
  hf_name: str
  kind: str


def to_ours(array: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
  """An HF tensor in our layout `shape`."""
  if kind == "copy":
    return array
  if kind == "bias_heads":
    return array.reshape(shape)
  return array.T.reshape(shape)  # the linear kinds: transpose, split heads


def to_hf(array: np.ndarray, kind: str) -> np.ndarray:
  """One of our parameters in HF's layout."""
  if kind == "copy":
    return array
  if kind == "linear":
    return array.T
  if kind == "linear_heads":  # [H, N, D] -> [N * D, H]
    return array.reshape(array.shape[0], -1).T
  if kind == "linear_out_heads":  # [N, D, H] -> [H, N * D]
    return array.reshape(-1, array.shape[-1]).T
  if kind == "bias_heads":  # [N, D] -> [N * D]
    return array.reshape(-1)
  raise ValueError(f"Unknown tensor kind {kind!r}; expected one of {KINDS}.")


def hf_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
  """HF's shape of a parameter of our `shape`."""
  return tuple(to_hf(np.empty(shape, np.int8), kind).shape)


def read_json(path: str | os.PathLike) -> dict:
  """A JSON object file; errors name the file (and line)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist.")
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path}: expected a JSON object, found {type(value).__name__}.")
  return value


def int_field(hf: Mapping[str, Any], key: str, path: str, default=None) -> int:
  """An int config field (a one-element list counts), or a ValueError naming
  the file and key."""
  value = hf.get(key, default)
  if isinstance(value, list) and len(value) == 1:
    value = value[0]
  if not isinstance(value, int) or isinstance(value, bool):
    raise ValueError(f"{path}: {key}={value!r} must be an int.")
  return value


class TensorSource:
  """Name -> file handle over a single-file or sharded safetensors checkpoint
  (transformers' order: the single file first)."""

  def __init__(self, ckpt_dir: str | os.PathLike, stack: contextlib.ExitStack):
    ckpt_dir = str(ckpt_dir)
    single = os.path.join(ckpt_dir, WEIGHTS_NAME)
    index = os.path.join(ckpt_dir, INDEX_NAME)
    self._where: dict[str, Any] = {}
    if os.path.exists(single):
      handle = stack.enter_context(safe_open(single, framework="numpy"))
      self._where = {name: handle for name in handle.keys()}
    elif os.path.exists(index):
      self._open_shards(ckpt_dir, index, stack)
    else:
      others = [n for n in UNSUPPORTED_WEIGHTS if os.path.exists(os.path.join(ckpt_dir, n))]
      hint = (f" It has {', '.join(others)}: only safetensors is supported; convert "
              "with transformers' `model.save_pretrained(dir)` (safetensors is its "
              "default)." if others else "")
      raise FileNotFoundError(
          f"{ckpt_dir} has neither {WEIGHTS_NAME} nor {INDEX_NAME}.{hint}")

  def _open_shards(self, ckpt_dir: str, index: str, stack: contextlib.ExitStack):
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index} has no 'weight_map' dict.")
    files: dict[str, Any] = {}
    for name, fname in weight_map.items():
      if fname not in files:
        fpath = os.path.join(ckpt_dir, fname)
        if not os.path.exists(fpath):
          raise FileNotFoundError(f"{index} lists {fname} for {name}; it does not exist.")
        files[fname] = stack.enter_context(safe_open(fpath, framework="numpy"))
      self._where[name] = files[fname]
    for fname, handle in files.items():  # every tensor a shard holds is checked
      for name in handle.keys():
        if weight_map.get(name) != fname:
          raise CheckpointMismatchError(
              f"{os.path.join(ckpt_dir, fname)} holds {name}, which {index} "
              f"maps to {weight_map.get(name)!r}.")

  def names(self) -> set[str]:
    return set(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._where[name].get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    return self._where[name].get_tensor(name)

  def equal(self, a: str, b: str, chunk_bytes: int = 1 << 26) -> bool:
    """Whether tensors `a` and `b` hold equal values (same shape and dtype),
    read in row chunks of about `chunk_bytes` that stop at the first difference."""
    sa, sb = self._where[a].get_slice(a), self._where[b].get_slice(b)
    shape = tuple(sa.get_shape())
    if shape != tuple(sb.get_shape()) or sa.get_dtype() != sb.get_dtype():
      return False
    if not shape or not shape[0]:
      return bool(np.array_equal(self.get(a), self.get(b)))
    rows = shape[0]
    step = max(1, chunk_bytes // max(1, sa[0:1].nbytes))
    return all(np.array_equal(sa[i:min(i + step, rows)], sb[i:min(i + step, rows)])
               for i in range(0, rows, step))


def tensor_names(ckpt_dir: str | os.PathLike) -> set[str]:
  """Every tensor name of a checkpoint directory."""
  with contextlib.ExitStack() as stack:
    return TensorSource(ckpt_dir, stack).names()


def flat(tree: Mapping) -> dict[tuple[str, ...], Any]:
  """{key path: leaf} of a nested parameter dict (`flax.traverse_util`)."""
  return traverse_util.flatten_dict(dict(tree))


def place(array: np.ndarray, sharding) -> jax.Array:
  """A host array onto `sharding` (each device gets only its slice), or onto
  the default device."""
  if sharding is None:
    return jax.device_put(np.ascontiguousarray(array))
  return jax.make_array_from_callback(
      array.shape, sharding, lambda index: np.ascontiguousarray(array[index]))


# ------------------------------------------------------------------ import


def check_names_and_shapes(source: "TensorSource", expected: Mapping[str, tuple],
                           ignored: set, ckpt_dir: str, family: str,
                           hint=lambda name: "") -> None:
  """Raises CheckpointMismatchError listing every missing, mis-shaped and
  unexpected tensor (`expected`: HF name -> HF shape; `ignored`: names that
  may be present without a parameter; `hint(name)` explains an unexpected
  one)."""
  present = source.names()
  problems = []
  for name in sorted(expected):
    if name not in present:
      problems.append(f"missing {name}: expected shape {list(expected[name])}")
    elif source.shape(name) != tuple(expected[name]):
      problems.append(f"mis-shaped {name}: expected {list(expected[name])}, "
                      f"found {list(source.shape(name))}")
  for name in sorted(present - set(expected) - set(ignored)):
    problems.append(f"unexpected {name}: shape {list(source.shape(name))}{hint(name)}")
  if problems:
    raise CheckpointMismatchError(
        f"Checkpoint {ckpt_dir} does not match the {family} config "
        f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))


def expected_shapes(maps: list[TensorMap], abstract: Any) -> dict[str, tuple]:
  """HF name -> HF shape of every mapped parameter of `abstract` (unboxed)."""
  leaves = flat(abstract)
  return {m.hf_name: hf_shape(tuple(leaves[m.path].shape), m.kind) for m in maps}


def read_params(source: "TensorSource", maps: list[TensorMap], abstract: Any,
                shardings: Any = None, arrays: Optional[Mapping[str, np.ndarray]] = None
                ) -> dict:
  """The parameter tree of `maps`, each tensor converted to our layout and
  dtype and placed on its sharding (`shardings` None: the default device) one
  at a time. `arrays` supplies tensors by HF name instead of the source
  (e.g. an embedding read once for its tied aliases)."""
  targets = flat(abstract)
  placements = None if shardings is None else flat(shardings)
  params: dict = {}
  for m in maps:
    target = targets[m.path]
    array = (arrays or {}).get(m.hf_name)
    array = source.get(m.hf_name) if array is None else array
    array = to_ours(array, m.kind, tuple(target.shape)).astype(target.dtype)
    sharding = None if placements is None else placements[m.path]
    try:
      params[m.path] = place(array, sharding)
    except ValueError as e:  # e.g. a dim not divisible by its mesh axis
      raise ValueError(f"Cannot place {m.hf_name} as {'/'.join(m.path)} "
                       f"{array.shape} with {sharding}: {e}") from e
    del array
  return traverse_util.unflatten_dict(params)


# ------------------------------------------------------------------ export


def _entries(params: Any, maps: list[TensorMap]) -> list[tuple[str, Any, str]]:
  """(hf name, our array, kind) of every mapped tensor, after checking that the
  maps cover the tree exactly."""
  leaves = flat(nn.meta.unbox(params))
  wanted = {m.path for m in maps}
  if set(leaves) != wanted:
    show = lambda paths: sorted("/".join(p) for p in paths)  # noqa: E731
    raise CheckpointMismatchError(
        f"params do not match the config: missing {show(wanted - set(leaves))}, "
        f"unexpected {show(set(leaves) - wanted)}.")
  return [(m.hf_name, leaves[m.path], m.kind) for m in maps]


def _host(entries) -> dict[str, np.ndarray]:
  return {name: np.ascontiguousarray(to_hf(np.asarray(jax.device_get(array)), kind))
          for name, array, kind in entries}


def write_checkpoint(params: Any, maps: list[TensorMap], config_dict: Mapping[str, Any],
                     out_dir: str, max_shard_bytes: Optional[int] = None) -> None:
  """Writes `config.json` and the mapped tensors in the HF layout.

  Args:
    params: the parameter tree (boxed or unboxed, any sharding).
    maps: every parameter's HF name and layout.
    config_dict: the `config.json` contents.
    out_dir: created if needed.
    max_shard_bytes: if the weights exceed it, write
      `model-XXXXX-of-YYYYY.safetensors` shards of at most this size (a single
      larger tensor gets its own shard) plus `model.safetensors.index.json`.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  shards: list[list[tuple[str, Any, str]]] = [[]]
  size = 0
  for entry in _entries(params, maps):
    nbytes = entry[1].size * entry[1].dtype.itemsize
    if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(entry)
    size += nbytes
  metadata = {"format": "pt"}
  if len(shards) == 1:
    save_file(_host(shards[0]), os.path.join(out_dir, WEIGHTS_NAME), metadata=metadata)
  else:
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      tensors = _host(shard)  # one shard on the host at a time
      save_file(tensors, os.path.join(out_dir, fname), metadata=metadata)
      for name, array in tensors.items():
        weight_map[name] = fname
        total += array.nbytes
      del tensors
    with open(os.path.join(out_dir, INDEX_NAME), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f,
                indent=2, sort_keys=True)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(dict(config_dict), f, indent=2, sort_keys=True)
