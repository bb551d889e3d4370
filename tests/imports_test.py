"""Core modules import without TensorFlow or seqio (the GPU path has neither)."""
import pathlib
import subprocess
import sys

import ptuning_jax

CORE = sorted(p.stem for p in pathlib.Path(ptuning_jax.__file__).parent.glob("*.py")
              if p.stem != "__init__")


def test_core_modules_import_without_tensorflow():
  code = ("import sys\n"
          f"mods = {CORE!r}\n"
          "import importlib\n"
          "for m in mods: importlib.import_module('ptuning_jax.' + m)\n"
          "import ptuning_jax.methods\n"
          "bad = [m for m in ('tensorflow', 'seqio', 'tensorflow_datasets', 'torch') if m in sys.modules]\n"
          "print(bad)\n"
          "sys.exit(1 if bad else 0)\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert len(CORE) > 20
