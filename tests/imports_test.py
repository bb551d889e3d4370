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


def _module_level_imports() -> list[str]:
  """Third-party modules the package imports at module level (dotted names;
  for `from X import Y`, both X and X.Y, which may be a module)."""
  import ast  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  names = set()
  for path in pathlib.Path(ptuning_jax.__path__[0]).rglob("*.py"):
    for node in ast.parse(path.read_text()).body:
      for sub in ast.walk(node) if isinstance(node, ast.Try) else [node]:
        if isinstance(sub, ast.Import):
          names.update(a.name for a in sub.names)
        elif isinstance(sub, ast.ImportFrom) and sub.level == 0 and sub.module:
          names.add(sub.module)
          names.update(f"{sub.module}.{a.name}" for a in sub.names)
  return sorted(n for n in names if n.split(".")[0] not in (
      {"ptuning_jax", "__future__"} | sys.stdlib_module_names))


def test_importing_the_package_has_no_side_effects():
  # Third-party packages are imported first (jax, for one, sets environment
  # variables when imported); then importing every module of ptuning_jax,
  # data.seqio included where TensorFlow is installed, must leave the root
  # logger's filters, handlers and level and os.environ as they were.
  all_modules = sorted(m.name for m in pkgutil.walk_packages(ptuning_jax.__path__,
                                                             "ptuning_jax."))
  code = ("import importlib, logging, os, sys\n"
          f"for name in {_module_level_imports()!r}:\n"
          "  try: importlib.import_module(name)\n"
          "  except ImportError: pass  # not a module, or not installed\n"
          "has_tf = 'tensorflow' in sys.modules\n"
          "root = logging.getLogger()\n"
          "before = (list(root.filters), list(root.handlers), root.level, dict(os.environ))\n"
          f"for m in {all_modules!r}:\n"
          f"  if has_tf or not m.startswith({TF_PACKAGE!r}): importlib.import_module(m)\n"
          "after = (list(root.filters), list(root.handlers), root.level, dict(os.environ))\n"
          "names = ('root logger filters', 'root logger handlers', 'root logger level', 'os.environ')\n"
          "for what, b, a in zip(names, before, after):\n"
          "  if a != b:\n"
          "    diff = set(a.items()) ^ set(b.items()) if what == 'os.environ' else (b, a)\n"
          "    print(f'importing ptuning_jax changed the {what}: {diff}')\n"
          "    sys.exit(1)\n"
          "print('seqio modules imported' if has_tf else 'no TensorFlow')\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
