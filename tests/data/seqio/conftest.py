"""Every module here tests `ptuning_jax.data.seqio`, the one package that
imports TensorFlow, tensorflow-datasets and seqio (the `data` extra), and
imports them at import time: without them each module is reported skipped,
naming what is missing, instead of failing to import."""
import importlib.util

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
