"""Tests for ptuning_jax.training.summaries."""
import dataclasses
import io
import json
import pathlib
import struct

import jax.numpy as jnp
import numpy as np
import pytest
import tqdm
from tensorboardX.proto import event_pb2

from ptuning_jax.training import summaries


def _read_events(logdir: pathlib.Path) -> list:
  """Parses TFRecord-framed event files without TensorFlow / tensorboard."""
  files = sorted(logdir.glob("events.out.tfevents.*"))
  assert files, f"no event file in {logdir}"
  events = []
  for path in files:
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      record = data[offset + 12:offset + 12 + length]  # skip the length's crc
      offset += 12 + length + 4  # and the data's crc
      events.append(event_pb2.Event.FromString(record))
  return events


def _scalars(events) -> dict:
  out = {}
  for event in events:
    for value in event.summary.value:
      if value.HasField("simple_value"):
        out[(value.tag, event.step)] = value.simple_value
  return out


def test_jsonl_and_console(tmp_path):
  stream = io.StringIO()
  with summaries.MetricWriter(tmp_path, tensorboard=False,
                              stream=stream) as writer:
    writer.write(10, {"loss": jnp.asarray(1.5), "accuracy": np.float32(0.25)})
    writer.write(20, {"accuracy": 0.75}, prefix="eval/rte")
    writer.write_text(20, "predictions", "a -> b")
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert [r["kind"] for r in records] == ["scalars", "scalars", "text"]
  assert records[0]["step"] == 10 and records[0]["prefix"] == "train"
  assert records[0]["metrics"] == {"loss": 1.5, "accuracy": 0.25}
  assert records[1]["prefix"] == "eval/rte"
  assert records[1]["metrics"] == {"accuracy": 0.75}
  assert records[2]["name"] == "predictions" and records[2]["text"] == "a -> b"
  assert all(isinstance(r["wall_time"], float) for r in records)
  assert records[0]["wall_time"] <= records[1]["wall_time"]
  console = stream.getvalue().splitlines()
  assert console == ["[train] step 10: accuracy=0.25 loss=1.5",
                     "[eval/rte] step 20: accuracy=0.75"]
  # Appends on reopening (a resumed run keeps its history).
  with summaries.MetricWriter(tmp_path, tensorboard=False,
                              console=False) as writer:
    writer.write(30, {"loss": 1.0})
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4


def test_tensorboard_scalars_and_text(tmp_path):
  with summaries.MetricWriter(tmp_path, console=False) as writer:
    writer.write(1, {"loss": 2.5})
    writer.write(2, {"loss": 1.25})
    writer.write(2, {"accuracy": 0.5}, prefix="eval")
    writer.write_text(2, "sample", "hello")
  train = _read_events(tmp_path / "tensorboard" / "train")
  assert _scalars(train) == {("loss", 1): 2.5, ("loss", 2): 1.25}
  texts = [v for e in train for v in e.summary.value
           if v.tag.startswith("sample")]
  assert texts and b"hello" in texts[0].tensor.string_val[0]
  evals = _read_events(tmp_path / "tensorboard" / "eval")
  assert _scalars(evals) == {("accuracy", 2): 0.5}


@dataclasses.dataclass(frozen=True)
class _Config:
  lr: float
  groups: tuple


def test_write_hparams(tmp_path):
  with summaries.MetricWriter(tmp_path, console=False,
                              tensorboard=False) as writer:
    path = writer.write_hparams({"optimizer": _Config(0.3, ("a", "b")),
                                 "model_dir": tmp_path, "steps": np.int64(5)})
  assert path == tmp_path / "hparams.json"
  assert json.loads(path.read_text()) == {
      "optimizer": {"lr": 0.3, "groups": ["a", "b"]},
      "model_dir": str(tmp_path), "steps": 5}
  with summaries.MetricWriter(tmp_path, console=False,
                              tensorboard=False) as writer:
    with pytest.raises(TypeError, match="'fn'"):
      writer.write_hparams({"fn": object()})


def test_console_line_never_lands_on_the_progress_bar(tmp_path):
  """With a progress bar drawn on the same stream, the metric line starts a
  line of its own (the bar is cleared first and redrawn after)."""
  stream = io.StringIO()
  with tqdm.tqdm(total=10, desc="train", file=stream) as bar, summaries.MetricWriter(
      tmp_path, tensorboard=False, jsonl=False, stream=stream) as writer:
    bar.update(3)
    bar.refresh()
    writer.write(3, {"loss": 1.5})
  text = stream.getvalue()
  line = text.index("[train] step 3: loss=1.5\n")
  assert "train:  30%" in text[:line]  # the bar was drawn before the line
  assert text[line - 1] in "\r\n", repr(text[:line + 30])


def test_only_enabled_process_writes(tmp_path):
  stream = io.StringIO()
  with summaries.MetricWriter(tmp_path / "run", enabled=False,
                              stream=stream) as writer:
    writer.write(1, {"loss": 1.0})
    writer.write_text(1, "t", "x")
    writer.write_hparams({"a": 1})
  assert not (tmp_path / "run").exists() and not stream.getvalue()


def test_errors(tmp_path):
  writer = summaries.MetricWriter(tmp_path, console=False, tensorboard=False)
  with pytest.raises(ValueError, match="'logits'.*shape"):
    writer.write(1, {"logits": np.ones(3)})
  with pytest.raises(TypeError, match="'t'"):
    writer.write_text(1, "t", 3)
  writer.close()
  with pytest.raises(RuntimeError, match="closed"):
    writer.write(1, {"loss": 1.0})
