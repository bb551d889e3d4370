"""Every module here tests `ptuning_jax.data.seqio`, the one package that
imports TensorFlow, tensorflow-datasets and seqio (the `data` extra), and
imports them at import time: without them each module is reported skipped,
naming what is missing, instead of failing to import.
Every test here also starts and ends without an explicit data configuration."""
import importlib.util
import sys

import pytest


# origin None: a namespace package, here this very folder when tests/data is on
# sys.path; the three are regular packages.
MISSING = [m for m in ("tensorflow", "tensorflow_datasets", "seqio")
           if (spec := importlib.util.find_spec(m)) is None or spec.origin is None]


class _NeedsDataExtra(pytest.File):
  """Stands in for a test module whose imports are not installed."""

  def collect(self):
    pytest.skip(f"{', '.join(MISSING)} not installed: tests of ptuning_jax.data.seqio "
                "need the `data` extra (pip install -e \".[data]\").")


def pytest_pycollect_makemodule(module_path, parent):
  if MISSING:
    return _NeedsDataExtra.from_parent(parent, path=module_path)
  return None


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
