"""Every test here starts and ends without an explicit data configuration."""
import sys

import pytest


@pytest.fixture(autouse=True)
def _forget_explicit_data_configuration():
  """`SeqioData(source=..., spm_path=...)` configures the process, as a run
  does; no test leaves its configuration to the next one. TensorFlow is not
  imported here (only modules a test already imported are reset)."""
  yield
  sources = sys.modules.get("ptuning_jax.data.seqio.sources")
  if sources is not None:
    sources.reset()
  vocabularies = sys.modules.get("ptuning_jax.data.seqio.vocabularies")
  if vocabularies is not None:
    vocabularies.configure(spm_path=None)
