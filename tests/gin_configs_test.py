"""Every shipped gin file parses; configs/ files start with their command;
gin/models/sizes hold only dimension macros; no __init__.py under gin/."""
import logging
import pathlib
import re

import gin
import pytest

from ptuning_jax import gin_utils

REPO = pathlib.Path(__file__).resolve().parents[1]
GIN_FILES = sorted(str(p.relative_to(REPO)) for p in REPO.glob("gin/**/*.gin"))
CONFIGS = sorted(str(p.relative_to(REPO)) for p in REPO.glob("configs/*.gin"))
SIZE_MACROS = {"EMBED_DIM", "NUM_HEADS", "HEAD_DIM", "MLP_DIM",
               "NUM_ENCODER_LAYERS", "NUM_DECODER_LAYERS", "VOCAB_SIZE"}


@pytest.fixture(autouse=True)
def _clear():
  gin.clear_config()
  yield
  gin.clear_config()


def test_there_are_gin_files():
  assert len(GIN_FILES) >= 10 and CONFIGS


@pytest.mark.parametrize("path", GIN_FILES + CONFIGS)
def test_gin_file_parses(path, gin_imports):
  gin_imports(path)
  gin_utils.parse([path], [])


@pytest.mark.parametrize("path", CONFIGS)
def test_config_first_comment_is_its_command(path):
  first = (REPO / path).read_text().splitlines()[0]
  assert first.startswith("# ptuning-jax "), first
  assert path in first, f"{path}: first line should run this file: {first}"


@pytest.mark.parametrize("path", sorted(REPO.glob("gin/models/sizes/*.gin")))
def test_size_files_hold_only_dimension_macros(path):
  for line in path.read_text().splitlines():
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    name = line.split("=")[0].strip()
    assert re.fullmatch(r"[A-Z_]+", name) and name in SIZE_MACROS, (path, line)


def test_no_init_py_in_gin_dir():
  assert not list(REPO.glob("gin/**/__init__.py")) and not (REPO / "gin/__init__.py").exists()
  import gin as gin_pkg  # the real gin-config package, not our folder
  assert hasattr(gin_pkg, "parse_config_files_and_bindings")


@pytest.mark.needs("tensorflow", "seqio")
def test_bad_binding_names_the_culprit():
  with pytest.raises(gin_utils.GinConfigError, match="num_stepz"):
    gin_utils.parse(["gin/runs/prompt_finetune.gin"], ["run.train.num_stepz = 3"])


def test_missing_gin_file_is_named():
  with pytest.raises(gin_utils.GinConfigError, match="nope.gin"):
    gin_utils.parse(["gin/runs/nope.gin"], [])


@pytest.mark.needs("tensorflow", "seqio")
def test_include_probes_are_not_logged_as_errors(tmp_path, monkeypatch, caplog):
  monkeypatch.chdir(tmp_path)  # includes are probed relative to the cwd first
  with caplog.at_level(logging.INFO):
    gin_utils.parse(["configs/synthetic_freq_prompt.gin"], [])
  assert not [r for r in caplog.records if "Path not found" in r.getMessage()]
