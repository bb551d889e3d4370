"""Every module outside `ptuning_jax.data.seqio` imports without TensorFlow,
seqio or torch (GPU images have neither), and importing the package has no
side effects on logging or the environment."""
import pkgutil
import subprocess
import sys

import ptuning_jax

TF_PACKAGE = "ptuning_jax.data.seqio"
MODULES = sorted(m.name for m in pkgutil.walk_packages(ptuning_jax.__path__, "ptuning_jax.")
                 if not (m.name == TF_PACKAGE or m.name.startswith(TF_PACKAGE + ".")))


def test_core_modules_import_without_tensorflow():
  code = ("import sys\n"
          f"mods = {MODULES!r}\n"
          "import importlib\n"
          "for m in mods: importlib.import_module(m)\n"
          "bad = [m for m in ('tensorflow', 'seqio', 'tensorflow_datasets', 'torch') if m in sys.modules]\n"
          "print(bad)\n"
          "sys.exit(1 if bad else 0)\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert len(MODULES) > 40
