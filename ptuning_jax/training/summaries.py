"""`MetricWriter`: scalar metrics to the console, TensorBoard and a JSONL log.

Outputs under `model_dir` (process 0 only):

  metrics.jsonl               one JSON object per `write` / `write_text`:
                                {"kind": "scalars", "step", "prefix",
                                 "wall_time", "metrics": {name: value}}
                                {"kind": "text", "step", "prefix",
                                 "wall_time", "name", "text"}
  tensorboard/<prefix>/       event files (tensorboardX, no TensorFlow);
                                one run per prefix, tags are metric names,
                                so `train` and `eval` curves overlay.
  hparams.json                from `write_hparams`.

Non-finite values are kept (JSON `NaN` / `Infinity`, as Python writes them).
"""
from __future__ import annotations

import dataclasses
import enum
import json
import os
import pathlib
import sys
import time
from typing import Any, Mapping, Optional, TextIO

import jax
import numpy as np
import tqdm

JSONL_NAME = "metrics.jsonl"
HPARAMS_NAME = "hparams.json"
TB_DIR = "tensorboard"


def _scalar(name: str, value: Any) -> float | int:
  """A metric value (Python, numpy or jax scalar) as a Python number."""
  array = np.asarray(value)
  if array.ndim or array.dtype.kind not in "biuf":
    raise ValueError(f"Metric {name!r} must be a real scalar; got "
                     f"{array.dtype} with shape {array.shape}.")
  return array.item()


def _jsonable(key: str, value: Any) -> Any:
  """hparam value -> JSON value; unknown types are an error naming `key`."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {f.name: _jsonable(f"{key}.{f.name}", getattr(value, f.name))
            for f in dataclasses.fields(value)}
  if isinstance(value, Mapping):
    return {str(k): _jsonable(f"{key}.{k}", v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(f"{key}[{i}]", v) for i, v in enumerate(value)]
  if isinstance(value, enum.Enum):
    return value.name
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    return np.asarray(value).tolist()
  raise TypeError(f"hparam {key!r} has type {type(value).__name__}, which "
                  "has no JSON form; pass a str, number, list or dict.")


class MetricWriter:
  """Fans metrics out to console, TensorBoard and `metrics.jsonl`.

  Args:
    model_dir: run directory (created if missing).
    console: print a compact line per `write`.
    tensorboard: write TensorBoard event files (needs tensorboardX).
    jsonl: append to `<model_dir>/metrics.jsonl`.
    enabled: whether this process writes; default `jax.process_index() == 0`.
    stream: where console lines go (default sys.stdout).
  """

  def __init__(self, model_dir: str | os.PathLike, console: bool = True,
               tensorboard: bool = True, jsonl: bool = True,
               enabled: Optional[bool] = None,
               stream: Optional[TextIO] = None):
    self.model_dir = pathlib.Path(model_dir)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.console, self.tensorboard, self.jsonl = console, tensorboard, jsonl
    self._stream = stream
    self._tb_writers: dict[str, Any] = {}
    self._jsonl_file: Optional[TextIO] = None
    self._closed = False
    if not self.enabled:
      return
    self.model_dir.mkdir(parents=True, exist_ok=True)
    if jsonl:
      self._jsonl_file = open(self.model_dir / JSONL_NAME, "a",
                              encoding="utf-8")

  # ------------------------------------------------------------- outputs

  def _tb(self, prefix: str):
    if prefix not in self._tb_writers:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      logdir = self.model_dir / TB_DIR / prefix
      self._tb_writers[prefix] = tensorboardX.SummaryWriter(logdir=str(logdir))
    return self._tb_writers[prefix]

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError(f"MetricWriter({self.model_dir}) is closed.")

  def _append_jsonl(self, record: dict) -> None:
    self._jsonl_file.write(json.dumps(record) + "\n")
    self._jsonl_file.flush()

  # ---------------------------------------------------------------- API

  def write(self, step: int, metrics: Mapping[str, Any],
            prefix: str = "train") -> None:
    """Writes scalar `metrics` at `step` under `prefix` (e.g. train, eval/rte).

    Values may be Python, numpy or jax scalars; anything else is an error.
    """
    self._check_open()
    values = {name: _scalar(name, v) for name, v in metrics.items()}
    if not self.enabled:
      return
    step = int(step)
    if self.console:
      body = " ".join(f"{k}={v:.6g}" for k, v in sorted(values.items()))
      # tqdm.write clears an active progress bar first (and redraws it after),
      # so the line never lands on the bar's line; without a bar, a print.
      stream = self._stream or sys.stdout
      tqdm.tqdm.write(f"[{prefix}] step {step}: {body}", file=stream)
      stream.flush()
    if self.tensorboard:
      writer = self._tb(prefix)
      for name, value in values.items():
        writer.add_scalar(name, value, global_step=step)
    if self.jsonl:
      self._append_jsonl({"kind": "scalars", "step": step, "prefix": prefix,
                          "wall_time": time.time(), "metrics": values})

  def write_text(self, step: int, name: str, text: str,
                 prefix: str = "train") -> None:
    """Writes `text` (e.g. sample predictions) to TensorBoard and the JSONL."""
    if not isinstance(text, str):
      raise TypeError(f"write_text({name!r}): text must be str, got "
                      f"{type(text).__name__}.")
    self._check_open()
    if not self.enabled:
      return
    step = int(step)
    if self.tensorboard:
      self._tb(prefix).add_text(name, text, global_step=step)
    if self.jsonl:
      self._append_jsonl({"kind": "text", "step": step, "prefix": prefix,
                          "wall_time": time.time(), "name": name,
                          "text": text})

  def write_hparams(self, hparams: Mapping[str, Any]) -> pathlib.Path:
    """Writes `hparams` to `<model_dir>/hparams.json` (and TensorBoard text)."""
    self._check_open()
    record = {str(k): _jsonable(str(k), v) for k, v in hparams.items()}
    path = self.model_dir / HPARAMS_NAME
    if not self.enabled:
      return path
    text = json.dumps(record, indent=2, sort_keys=True)
    path.write_text(text + "\n", encoding="utf-8")
    if self.tensorboard:
      self._tb("train").add_text("hparams", f"```\n{text}\n```", global_step=0)
    return path

  def flush(self) -> None:
    for writer in self._tb_writers.values():
      writer.flush()
    if self._jsonl_file is not None:
      self._jsonl_file.flush()

  def close(self) -> None:
    self._closed = True
    for writer in self._tb_writers.values():
      writer.close()
    self._tb_writers = {}
    if self._jsonl_file is not None:
      self._jsonl_file.close()
      self._jsonl_file = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
