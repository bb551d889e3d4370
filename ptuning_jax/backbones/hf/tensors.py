"""Hugging Face checkpoint tensors: files, layouts, placement.

Shared by the T5 (`hf_checkpoints`) and BERT-family (`bert_checkpoints`)
loaders: the safetensors source over a single file or an index of shards
(every tensor a shard holds must be the one the index maps to it), the
per-tensor layout conversions between HF's `Linear` layout and our kernels,
tree paths and placement of host arrays onto target shardings.

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
from typing import Any, Mapping

import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
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


def get_path(tree: Mapping, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def place(array: np.ndarray, sharding) -> jax.Array:
  """A host array onto `sharding` (each device gets only its slice), or onto
  the default device."""
  if sharding is None:
    return jax.device_put(np.ascontiguousarray(array))
  return jax.make_array_from_callback(
      array.shape, sharding, lambda index: np.ascontiguousarray(array[index]))
