"""End to end: `ptuning-jax train` on SuperGLUE RTE from the real files in
../shared/data, plus clear errors for a missing data file and a malformed
TSV row."""
import json

import pytest

from ptuning_jax import cli
from ptuning_jax.backbones.hf import t5 as hf_t5
from ptuning_jax import testing

CONFIG = "configs/rte_local_prompt_smoke.gin"


@pytest.fixture(scope="module")
def t5_vocab_backbone(tmp_path_factory):
  config = testing.tiny_config(vocab_size=32128)
  path = str(tmp_path_factory.mktemp("t5_vocab_backbone"))
  hf_t5.save_checkpoint(testing.init_params(config, seed=0), config, path)
  return path


def _flags(backbone, model_dir, data_dir, spm_path, *extra):
  return ["train", "--gin_file", CONFIG, f"--gin.CHECKPOINT_DIR='{backbone}'",
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.DATA_DIR='{data_dir}'",
          f"--gin.SPM_PATH='{spm_path}'", *extra]


@pytest.mark.slow
def test_rte_from_real_files(tmp_path, shared_data, t5_vocab_path,
                             t5_vocab_backbone, capsys):
  code = cli.main(_flags(t5_vocab_backbone, tmp_path / "rte", shared_data,
                         t5_vocab_path, "--gin.TRAIN_STEPS=4", "--gin.EVAL_EVERY=4",
                         "--gin.CHECKPOINT_EVERY=4", "--gin.EVAL_MAX_EXAMPLES=32"))
  assert code == 0, capsys.readouterr().err[-2000:]
  out = capsys.readouterr().out
  metrics = json.loads(out[out.index("{"):])
  assert 0.0 <= metrics["eval/accuracy"] <= 100.0
  assert metrics["trainable_params"] == 8 * 12
  assert (tmp_path / "rte" / "checkpoints" / "numpy" / "4").is_dir()


def test_missing_data_file_is_named(tmp_path, t5_vocab_path, t5_vocab_backbone, capsys):
  empty = tmp_path / "empty_data"
  empty.mkdir()
  code = cli.main(_flags(t5_vocab_backbone, tmp_path / "x", empty, t5_vocab_path))
  assert code == 1
  err = capsys.readouterr().err
  assert str(empty) in err and "rte" in err.lower()


def test_malformed_tsv_row_is_named(tmp_path, t5_vocab_path, t5_vocab_backbone, capsys):
  data = tmp_path / "bad_data" / "glue" / "rte"
  data.mkdir(parents=True)
  (data / "train.tsv").write_text(
      "index\tsentence1\tsentence2\tlabel\n"
      "0\tA man runs.\tA person moves.\tentailment\n"
      "1\tthis row has too few fields\n")
  (data / "dev.tsv").write_text((data / "train.tsv").read_text())
  code = cli.main(_flags(t5_vocab_backbone, tmp_path / "y", tmp_path / "bad_data",
                         t5_vocab_path, "--gin.MIXTURE_OR_TASK_NAME='glue_rte_v200'"))
  assert code == 1
  err = capsys.readouterr().err
  assert "train.tsv" in err and ":3" in err, err[-1000:]
