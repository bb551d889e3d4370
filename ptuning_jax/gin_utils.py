"""Gin plumbing for the entry points: search paths, flags, config files.

Library code carries no gin decorators: gin files use
`from __gin__ import dynamic_registration` and bind functions by module path.
"""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import gin

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# `include 'gin/runs/prompt_finetune.gin'` resolves against the repo root
# (an editable install) and the working directory.
DEFAULT_SEARCH_PATHS = (str(REPO_ROOT), os.getcwd())


class GinConfigError(ValueError):
  """A gin file or binding could not be parsed or applied."""


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = ()) -> None:
  """Parses files then bindings; errors name the culprit file/binding."""
  gin.clear_config()
  for path in list(search_paths) + list(DEFAULT_SEARCH_PATHS):
    gin.add_config_file_search_path(path)
  for f in gin_files:
    if not _resolvable(f, list(search_paths) + list(DEFAULT_SEARCH_PATHS)):
      raise GinConfigError(f"gin file {f!r} not found (searched {list(search_paths)}"
                           f" + {list(DEFAULT_SEARCH_PATHS)}).")
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings),
                                        finalize_config=False)
  except (ValueError, SyntaxError, ImportError, AttributeError, KeyError) as e:
    raise GinConfigError(f"bad gin config: {e}") from e


def _resolvable(path: str, search_paths: Sequence[str]) -> bool:
  if os.path.exists(path):
    return True
  return any(os.path.exists(os.path.join(p, path)) for p in search_paths)


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
