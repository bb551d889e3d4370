"""Shipped notebooks are valid JSON notebooks whose code cells compile and
only use names the package exports."""
import ast
import importlib
import importlib.util
import json
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(REPO.glob("notebooks/*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_compiles_and_imports_exist(path):
  nb = json.loads(path.read_text())
  source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
  tree = ast.parse(source)
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "ptuning_jax":
      module = importlib.import_module(node.module)
      for alias in node.names:
        assert (hasattr(module, alias.name) or importlib.util.find_spec(
            f"{node.module}.{alias.name}") is not None), (node.module, alias.name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_cells_have_ids_and_no_fixed_tmp_folder(path):
  """nbformat 4.5 cell ids (older notebooks make nbformat warn); outputs go
  to a folder beside the notebook, not a fixed /tmp path."""
  nb = json.loads(path.read_text())
  assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5)
  ids = [c.get("id", "") for c in nb["cells"]]
  assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in ids), ids
  assert len(set(ids)) == len(ids), ids
  code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
  assert "/tmp" not in code


def test_there_is_a_notebook():
  assert NOTEBOOKS
