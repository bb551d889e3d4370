"""SeqioData applies the explicit data configuration gin gives it (the
library never reads gin): the raw-data source of every task and the T5
SentencePiece model; explicit settings win over the environment."""
import pytest
import tensorflow_datasets as tfds

from ptuning_jax import gin_utils
from ptuning_jax.data.seqio import seqio_data
from ptuning_jax.data.seqio import sources
from ptuning_jax.data.seqio import vocabularies

LENGTHS = {"inputs": 64, "targets": 8}
RTE = "super_glue_rte_v102"
MODULE = "ptuning_jax.data.seqio.lester_tasks"


def test_one_gin_setting_switches_every_task_to_local_files(
    shared_data, t5_vocab_path, monkeypatch):
  monkeypatch.setenv(sources.SOURCE_ENV, "tfds")
  monkeypatch.setenv(vocabularies.SPM_PATH_ENV, "/env/does/not/exist.model")
  gin_utils.parse(["configs/rte_local_prompt_smoke.gin"],
                  [f"DATA_DIR = '{shared_data}'", f"SPM_PATH = '{t5_vocab_path}'",
                   "CHECKPOINT_DIR = 'unused'"])
  try:
    assert sources.current_config().source == "tfds"  # parsing applies nothing
    data = gin_utils.call(seqio_data.SeqioData)
  finally:
    gin_utils.clear()
  assert sources.current_config() == sources.SourceConfig("local", str(shared_data))
  assert vocabularies.default_spm_path() == str(t5_vocab_path)
  assert data.vocab.sentencepiece_model_file == str(t5_vocab_path)
  # Any task now reads the official files, not only the run's.
  raw = sources.raw_dataset("glue/cola")
  (ex,) = tfds.as_numpy(sources.read_raw(raw, "validation").take(1))
  assert ex["idx"] == 0 and ex["sentence"]


def test_explicit_source_wins_over_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv(sources.SOURCE_ENV, "tfds")
  config = sources.SourceConfig("local", str(tmp_path))
  seqio_data.SeqioData("synthetic_copy", LENGTHS,
                       module="ptuning_jax.data.seqio.synthetic_tasks",
                       source=config)
  assert sources.current_config() is config
  with pytest.raises(TypeError, match="expected a sources.SourceConfig"):
    seqio_data.SeqioData("synthetic_copy", LENGTHS, source="local")


def test_a_second_sentencepiece_model_is_an_error(t5_vocab_path, tmp_path):
  seqio_data.SeqioData(RTE, LENGTHS, module=MODULE, spm_path=str(t5_vocab_path))
  other = str(tmp_path / "other.model")
  with pytest.raises(ValueError, match=f"spm_path='{other}'.*already uses"):
    seqio_data.SeqioData(RTE, LENGTHS, module=MODULE, spm_path=other)
