"""Small file helpers for the entry points: inputs to infer, JSON outputs."""
from __future__ import annotations

import json
import os
from typing import Any, Iterable


def read_inputs(path: str) -> list[str]:
  """Input texts: JSONL with an "inputs" field (`.jsonl`), else one per line.

  Raises:
    FileNotFoundError: naming `path`.
    ValueError: naming the file and line of a malformed JSONL row.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"input file {path} does not exist.")
  texts = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line.strip():
        continue
      if path.endswith(".jsonl"):
        try:
          texts.append(str(json.loads(line)["inputs"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise ValueError(f"{path}:{lineno}: expected a JSON object with an "
                           f"'inputs' field ({e}).") from None
      else:
        texts.append(line)
  return texts


def write_json(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)


def write_jsonl(path: str, rows: Iterable[Any]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
