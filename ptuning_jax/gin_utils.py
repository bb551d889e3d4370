"""Gin plumbing for the entry points: search paths, flags, config files.

Library code carries no gin decorators: gin files use
`from __gin__ import dynamic_registration` and bind functions by module path.
"""
from __future__ import annotations

import logging
import os
import pathlib
import re
from typing import Sequence

import gin

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# `include 'gin/runs/prompt_finetune.gin'` resolves against the repo root
# (an editable install) and the working directory.
DEFAULT_SEARCH_PATHS = (str(REPO_ROOT), os.getcwd())


class GinConfigError(ValueError):
  """A gin file or binding could not be parsed or applied."""


class _DropGinPathProbes(logging.Filter):
  """gin's package-resource reader logs "Path not found" at ERROR for every
  search-path candidate it probes (includes are tried relative to the working
  directory first); those are not errors, so they are dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.getMessage().startswith("Path not found: ")
                and record.pathname.endswith(os.path.join("gin", "resource_reader.py")))


_PATH_PROBE_FILTER = _DropGinPathProbes()


def _drop_gin_path_probes() -> None:
  """Installs the filter on the root logger once (at the first `parse`, not
  at import: importing a module leaves logging alone)."""
  root = logging.getLogger()
  if _PATH_PROBE_FILTER not in root.filters:
    root.addFilter(_PATH_PROBE_FILTER)


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = ()) -> None:
  """Parses files then bindings; errors name the culprit file/binding."""
  _drop_gin_path_probes()
  gin.clear_config()
  for path in list(search_paths) + list(DEFAULT_SEARCH_PATHS):
    gin.add_config_file_search_path(path)
  resolved = []
  for f in gin_files:
    path = _resolve(f, list(search_paths) + list(DEFAULT_SEARCH_PATHS))
    if path is None:
      raise GinConfigError(f"gin file {f!r} not found (searched {list(search_paths)}"
                           f" + {list(DEFAULT_SEARCH_PATHS)}).")
    resolved.append(path)
  try:
    # Absolute paths: gin's package-resource reader is never asked to import
    # a top-level path (it crashes on a namespace package such as `configs`
    # when the repo is on sys.path and the working directory is elsewhere).
    gin.parse_config_files_and_bindings(resolved, list(bindings),
                                        finalize_config=False)
  except (ValueError, SyntaxError, ImportError, AttributeError, KeyError) as e:
    raise GinConfigError(f"bad gin config: {e}") from e


def _resolve(path: str, search_paths: Sequence[str]) -> str | None:
  """The absolute path of a gin file: as given (absolute, or relative to the
  working directory), else under the first search path holding it."""
  for candidate in [path] + [os.path.join(p, path) for p in search_paths]:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  return None


_INCLUDE = re.compile(r"^include\s+['\"](.+?)['\"]", re.M)
_MACRO_DEFINITION = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.+?)\s*$", re.M)
_MACRO_REFERENCE = re.compile(r"%([A-Z][A-Z0-9_]*)\b")


def required_macros(gin_file: str, search_paths: Sequence[str] = ()) -> list[str]:
  """The macros `gin_file` (with its includes) leaves to be set: those bound
  to `%gin.REQUIRED` and those referenced but never defined (e.g. METHOD,
  which a gin/methods/*.gin file provides). Read from the text, not parsed."""
  paths = list(search_paths) + list(DEFAULT_SEARCH_PATHS)
  required, defined, referenced = set(), set(), set()

  def visit(name: str) -> None:
    path = _resolve(name, paths)
    if path is None:
      raise GinConfigError(f"gin file {name!r} not found (searched {paths}).")
    with open(path) as f:
      text = "\n".join(l for l in f.read().splitlines() if not l.lstrip().startswith("#"))
    for include in _INCLUDE.findall(text):
      visit(include)
    for macro, value in _MACRO_DEFINITION.findall(text):
      defined.add(macro)
      if value == "%gin.REQUIRED":
        required.add(macro)
      else:  # a later file gave it a value
        required.discard(macro)
    referenced.update(_MACRO_REFERENCE.findall(text))

  visit(gin_file)
  return sorted(required | (referenced - defined))


def flag_bindings(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits `--gin.NAME=VALUE` flags out of argv. Returns (bindings, rest)."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        raise GinConfigError(f"{arg!r}: expected --gin.NAME=VALUE.")
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return bindings, rest


def write_config(model_dir: str, name: str = "config.gin", operative: bool = False) -> str:
  """Writes the parsed (or operative) gin config into `model_dir`."""
  text = gin.operative_config_str() if operative else gin.config_str()
  if not text.strip():
    return ""  # not a gin-configured run (Python API, demo)
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, name)
  with open(path, "w") as f:
    f.write(text)
  return path


def call(fn, **kwargs):
  """Calls `fn` with its gin bindings applied."""
  return gin.get_configurable(fn)(**kwargs)


def clear() -> None:
  """Forgets all parsed gin config."""
  gin.clear_config()
