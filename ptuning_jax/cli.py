"""`ptuning-jax`: the command line.

  ptuning-jax demo                          # the embedded offline demo
  ptuning-jax train --gin_file=configs/X.gin [--gin.NAME=VALUE ...]
  ptuning-jax eval  --gin_file=... [--gin.NAME=VALUE ...]
  ptuning-jax infer --gin_file=... --gin.INPUT_FILE="'in.txt'" ...
  ptuning-jax xprompt --gin_file=...        # XPrompt prune / rewind / retrain rounds
  ptuning-jax tasks [--module M]            # registered tasks and mixtures
  ptuning-jax inspect TASK [--split S] [-n N]
  ptuning-jax bench [...]                   # synthetic-batch benchmark
  ptuning-jax experiments --gin_file=...    # method x task x seed grid (BERT family)
  ptuning-jax verify CHECKPOINT_DIR         # ours vs transformers on a Hugging Face checkpoint

Every gin-driven command takes `--gin_file` (repeatable), `--gin.NAME=VALUE`
bindings and `--gin_search_paths` (comma-separated). Kept thin: the work is in
importable functions (`ptuning_jax.training.run`, `ptuning_jax.projects.demo`, ...).
"""
from __future__ import annotations

import argparse
import os
import importlib
import json
import logging
import sys
from typing import Optional, Sequence

# command -> (module, gin-configured function, summary of its result or None)
GIN_COMMANDS = {
    "train": ("ptuning_jax.training.run", "train", None),
    "eval": ("ptuning_jax.training.run", "evaluate", None),
    "infer": ("ptuning_jax.training.run", "infer", None),
    "xprompt": ("ptuning_jax.training.recipes.xprompt", "run_rounds", "summary"),
}


def _gin_parser(command: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=f"ptuning-jax {command}")
  p.add_argument("--gin_file", action="append", default=[],
                 help="gin file (repeatable), relative to the search paths.")
  p.add_argument("--gin_search_paths", default="",
                 help="comma-separated extra directories for gin includes.")
  p.add_argument("--gin_bindings", action="append", default=[],
                 help="a gin binding 'NAME = VALUE' (repeatable); same as --gin.NAME=VALUE.")
  return p


def run_gin_command(command: str, argv: Sequence[str]) -> object:
  from ptuning_jax import gin_utils
  bindings, rest = gin_utils.flag_bindings(argv)
  args = _gin_parser(command).parse_args(rest)
  if not args.gin_file:
    raise SystemExit(f"ptuning-jax {command}: at least one --gin_file is required.")
  search = [s for s in args.gin_search_paths.split(",") if s]
  gin_utils.parse(args.gin_file, list(args.gin_bindings) + bindings, search)
  module_name, fn_name, summary = GIN_COMMANDS[command]
  module = importlib.import_module(module_name)
  try:
    result = gin_utils.call(getattr(module, fn_name))
  finally:
    gin_utils.clear()  # one command, one config: leave no bindings behind
  if summary:
    result = getattr(module, summary)(result)
  print(json.dumps(result, indent=2, sort_keys=True, default=str))
  return result


def _tasks(argv):
  p = argparse.ArgumentParser(prog="ptuning-jax tasks")
  p.add_argument("--module", action="append", default=[],
                 help="extra module(s) to import that register tasks.")
  p.add_argument("--sizes", action="store_true", help="also count split sizes (reads data).")
  args = p.parse_args(argv)
  for m in args.module:
    importlib.import_module(m)
  from ptuning_jax.data.seqio import inspection
  print(inspection.format_task_table(inspection.list_tasks(with_sizes=args.sizes)))


def _inspect(argv):
  p = argparse.ArgumentParser(prog="ptuning-jax inspect")
  p.add_argument("task")
  p.add_argument("--split", default="validation")
  p.add_argument("-n", type=int, default=3)
  p.add_argument("--module", action="append", default=[])
  args = p.parse_args(argv)
  for m in args.module:
    importlib.import_module(m)
  from ptuning_jax.data.seqio import inspection
  print(inspection.inspect_task(args.task, split=args.split, n=args.n))


def _demo(argv):
  from ptuning_jax.projects import demo
  demo.main(argv)


def _bench(argv):
  from ptuning_jax.projects.bench import bench
  bench.main(argv)


def _experiments(argv):
  from ptuning_jax.projects import method_comparison
  method_comparison.main(argv)


def _verify(argv):
  from ptuning_jax.backbones import verify
  verify.main(argv)


COMMANDS = {"tasks": _tasks, "inspect": _inspect, "demo": _demo, "bench": _bench,
            "experiments": _experiments, "verify": _verify}


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  # TensorFlow (seqio's input pipeline) reads this when it is first imported,
  # which the commands do lazily, after this line.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src.xla_bridge", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from ptuning_jax.training import cpu_speed  # pylint: disable=g-import-not-at-top
  cpu_speed.unroll_threefry()  # same dropout masks, faster on CPU
  if not argv or argv[0] in ("-h", "--help"):
    print(__doc__)
    return 0
  command, rest = argv[0], argv[1:]
  try:
    if command in GIN_COMMANDS:
      run_gin_command(command, rest)
    elif command in COMMANDS:
      COMMANDS[command](rest)
    else:
      print(f"ptuning-jax: unknown command {command!r}.\n{__doc__}", file=sys.stderr)
      return 2
  except (ValueError, FileNotFoundError) as e:
    # Configuration and input errors: one clear message, no traceback wall.
    if logging.getLogger().isEnabledFor(logging.DEBUG):
      raise
    print(f"ptuning-jax {command}: error ({type(e).__name__}): {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
