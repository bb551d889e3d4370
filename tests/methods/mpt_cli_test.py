"""MPT's three stages through `ptuning-jax train` and seqio: teacher prompt
tuning, source training on a mixture with `task_index`, target adaptation."""
import json

import numpy as np
import pytest

for _module in ("tensorflow", "seqio"):
  pytest.importorskip(_module, reason=f"{_module} is not installed; MPT through the CLI "
                      "reads seqio tasks (the `data` extra).")

# pylint: disable=g-import-not-at-top,wrong-import-position
from ptuning_jax import cli
from ptuning_jax import testing
from ptuning_jax.data import vocab as vocab_lib
from ptuning_jax.data.seqio import seqio_data
from ptuning_jax.data.seqio import synthetic_tasks

SOURCES = ["synthetic_count", "synthetic_max", "synthetic_more"]
LENGTHS = {"inputs": 34, "targets": 4}


def _task_of(tokens: np.ndarray) -> str:
  text = vocab_lib.ByteVocab().decode([int(t) for t in tokens if t > 1])
  return "synthetic_" + text.split(" ")[0].rstrip(":")


def test_mixture_batches_carry_each_examples_task_index():
  order = ["synthetic_more", "synthetic_count", "synthetic_max"]
  data = seqio_data.SeqioData(synthetic_tasks.SOURCE_MIXTURE_NAME, LENGTHS,
                              batch_size=64, seed=3, task_index=order,
                              eval_task="synthetic_max")
  batch = next(iter(data.train_iterator()))
  assert batch["task_index"].dtype == np.int32
  assert {o for o in batch["task_index"]} == {0, 1, 2}
  for tokens, index in zip(batch["encoder_input_tokens"], batch["task_index"]):
    assert _task_of(tokens) == order[index]
  eval_set = data.eval_data("validation", max_examples=8).dataset
  np.testing.assert_array_equal(eval_set.arrays["task_index"], np.full([8], 2))
  assert all(_task_of(t) == "synthetic_max"
             for t in eval_set.arrays["encoder_input_tokens"])


def test_task_index_and_eval_task_are_checked():
  mix = synthetic_tasks.SOURCE_MIXTURE_NAME
  with pytest.raises(ValueError, match=r"missing \['synthetic_more'\]"):
    seqio_data.SeqioData(mix, LENGTHS, task_index=SOURCES[:2])
  with pytest.raises(ValueError, match="eval_task='synthetic_copy' is not a task"):
    seqio_data.SeqioData(mix, LENGTHS, eval_task="synthetic_copy")
  with pytest.raises(ValueError, match="set SeqioData.eval_task"):
    seqio_data.SeqioData(mix, LENGTHS).eval_data("validation")
  single = seqio_data.SeqioData("synthetic_max", LENGTHS, batch_size=4, task_index=True)
  np.testing.assert_array_equal(next(iter(single.train_iterator()))["task_index"],
                                np.zeros([4]))


def _flags(backbone, model_dir, *extra):
  return [f"--gin.CHECKPOINT_DIR='{backbone}'", f"--gin.MODEL_DIR='{model_dir}'",
          "--gin.TRAIN_STEPS=2", "--gin.EVAL_EVERY=2", "--gin.CHECKPOINT_EVERY=2",
          "--gin.EVAL_MAX_EXAMPLES=16", "--gin.PROMPT_LENGTH=3", "--gin.BATCH_SIZE=8",
          *extra]


def _last_json(out: str) -> dict:
  return json.loads(out[out.index("{"):])


def test_three_stages_from_the_command_line(tmp_path, byte_backbone, capsys):
  backbone, config = byte_backbone, testing.byte_config()
  teacher_dir = tmp_path / "teacher_count"
  assert cli.main(["train", "--gin_file", "configs/synthetic_mpt_teacher.gin",
                   *_flags(backbone, teacher_dir),
                   "--gin.MIXTURE_OR_TASK_NAME='synthetic_count'"]) == 0
  teachers = [str(teacher_dir / "checkpoints" / "numpy" / "2" / "prompt.npy")]
  for name in SOURCES[1:]:  # the other teachers' quality is not under test
    path = tmp_path / f"{name}.npy"
    np.save(path, np.random.default_rng(0).normal(size=(3, config.d_model)))
    teachers.append(str(path))
  capsys.readouterr()

  source_dir = tmp_path / "source"
  assert cli.main(["train", "--gin_file", "configs/synthetic_mpt_source.gin",
                   *_flags(backbone, source_dir),
                   f"--gin.TEACHER_FILES={teachers}"]) == 0
  metrics = _last_json(capsys.readouterr().out)
  assert "eval/accuracy" in metrics and np.isfinite(metrics["train/loss"])
  assert metrics["train/distill_kl"] > 0  # mpt.gin's loss term reached the run
  export = source_dir / "checkpoints" / "numpy" / "2"
  assert np.load(export / "prefix_task_cols.npy").shape == (3, 3, 1)

  target_dir = tmp_path / "target"
  assert cli.main(["train", "--gin_file", "configs/synthetic_freq_mpt_target.gin",
                   *_flags(backbone, target_dir), f"--gin.MPT_SOURCE='{export}'"]) == 0
  metrics = _last_json(capsys.readouterr().out)
  assert "eval/accuracy" in metrics
  cols = np.load(target_dir / "checkpoints" / "numpy" / "2" / "prefix_task_cols.npy")
  assert cols.shape == (1, 3, 1)


def test_task_count_mismatch_names_both_settings(tmp_path, byte_backbone, capsys):
  backbone, config = byte_backbone, testing.byte_config()
  teachers = []
  for name in SOURCES:
    teachers.append(str(tmp_path / f"{name}.npy"))
    np.save(teachers[-1], np.zeros((3, config.d_model)))
  assert cli.main(["train", "--gin_file", "configs/synthetic_mpt_source.gin",
                   *_flags(backbone, tmp_path / "run"),
                   f"--gin.TEACHER_FILES={teachers[:2]}", "--gin.MPT_NUM_TASKS=2"]) == 1
  assert ("MPT.num_tasks=2 but the data numbers 3 tasks (SeqioData.task_index="
          in capsys.readouterr().err)
