"""Our bench and Hugging Face PEFT's, back to back on one machine, with ratios.

  python -m ptuning_jax.projects.bench.compare --sizes tiny,small --device cpu \\
      --dtype fp32 --batch 8 --inputs 128 --targets 8 --prompt 20 --rounds 3

  python -m ptuning_jax.projects.bench.compare --sizes base,large,xl --device cuda \\
      --dtype bf16 --batch 32 --inputs 256 --targets 16 --prompt 100

For each size and round, runs `ptuning-jax bench` and the PEFT baseline
script (`--peft_script`, default `../shared/bench/peft_t5_baseline.py` beside
the repository) in fresh subprocesses, one after the other (alternating which
goes first), and prints a table: examples/s of each (median over rounds,
with the range), their ratio (ours / PEFT, > 1 is faster), peak memory of
each and its ratio (ours / PEFT, < 1 is smaller).

Memory: on an accelerator both scripts report the device peak
(`peak_mem_gib`). On CPU neither has device stats, so both processes'
peak resident set sizes (`ru_maxrss` from `os.wait4`, whole process:
interpreter, runtime and model) are compared instead.

`--taskset 0` pins both processes to CPU 0 (`taskset -c`), so each runs
single-threaded on the same core: a per-core comparison that other load on
the machine disturbs far less than a two-thread one (PyTorch's OpenMP
threads slow down badly when the cores are oversubscribed).

Our bench tunes glibc's allocator for its own process
(`bench.keep_freed_memory`). `--peft_malloc tuned` runs PEFT under the
same settings (environment variables), `both` runs it both ways, so the
comparison can be made with the allocator held equal.

Dimension letters: B batch, T input length, P prompt length, S target length.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time
from typing import Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[3]  # the repository root
DEFAULT_PEFT_SCRIPT = REPO.parent / "shared" / "bench" / "peft_t5_baseline.py"
TUNED_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def run_child(cmd: list[str], env: Optional[dict] = None
              ) -> tuple[Optional[dict], float, str]:
  """Runs `cmd` to completion.

  Returns:
    (the last JSON object line it printed or None, its peak resident set
    size in GiB (`ru_maxrss`), the tail of its stderr).
  """
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=dict(os.environ, **(env or {})))
  output = proc.stdout.read()
  proc.stdout.close()
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  records = [json.loads(line) for line in output.splitlines()
             if line.startswith("{") and line.rstrip().endswith("}")]
  record = records[-1] if records else None
  if record is not None:
    record["exit_code"] = proc.returncode
  return record, usage.ru_maxrss * 1024 / 2**30, output[-2000:]


def peft_command(script: pathlib.Path, size: str, args: argparse.Namespace) -> list[str]:
  return [sys.executable, str(script), "--size", size, "--batch", str(args.batch),
          "--inputs", str(args.inputs), "--targets", str(args.targets),
          "--prompt", str(args.prompt), "--steps", str(args.steps),
          "--dtype", args.dtype, "--device", args.device]


def ours_command(size: str, args: argparse.Namespace) -> list[str]:
  return ([sys.executable, "-m", "ptuning_jax.projects.bench.bench", "--size", size,
           "--batch", str(args.batch), "--inputs", str(args.inputs),
           "--targets", str(args.targets), "--prompt", str(args.prompt),
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--dtype", args.dtype] + args.bench_args.split())


def _one(system: str, cmd: list[str], env: Optional[dict]) -> dict:
  load = os.getloadavg()[0]
  start = time.time()
  record, rss, tail = run_child(cmd, env)
  if record is None or "step_s" not in record:
    raise RuntimeError(f"{system} run failed: {' '.join(cmd)}\n{tail}")
  record.update(system=system, child_peak_rss_gib=round(rss, 3),
                load_before=round(load, 2), wall_s=round(time.time() - start, 1))
  return record


def run_size(size: str, args: argparse.Namespace, script: pathlib.Path) -> list[dict]:
  """All rounds of one size; systems alternate which runs first."""
  pin = ["taskset", "-c", args.taskset] if args.taskset else []
  systems = [("ours", pin + ours_command(size, args), None)]
  if args.peft_malloc in ("default", "both"):
    systems.append(("peft", pin + peft_command(script, size, args), None))
  if args.peft_malloc in ("tuned", "both"):
    systems.append(("peft+tuned_malloc", pin + peft_command(script, size, args),
                    TUNED_MALLOC_ENV))
  records = []
  for r in range(args.rounds):
    order = systems if r % 2 == 0 else systems[::-1]
    for name, cmd, env in order:
      record = _one(name, cmd, env)
      record["round"] = r
      print(json.dumps(record), file=sys.stderr, flush=True)
      records.append(record)
  return records


def memory_gib(record: dict) -> Optional[float]:
  """Device peak where the run reports one, else the process peak RSS."""
  if record.get("peak_mem_gib") is not None:
    return record["peak_mem_gib"]
  return record.get("child_peak_rss_gib")


def summarize(records: Sequence[dict]) -> list[dict]:
  """One row per (size, system): medians and ranges, ratios against PEFT."""
  rows = []
  for size in dict.fromkeys(r["size"] for r in records):
    by_system: dict[str, list[dict]] = {}
    for r in records:
      if r["size"] == size:
        by_system.setdefault(r["system"], []).append(r)
    ours = by_system.get("ours", [])
    ours_ex = statistics.median(r["examples_per_s"] for r in ours) if ours else None
    ours_mem = statistics.median(memory_gib(r) for r in ours) if ours else None
    for system, runs in by_system.items():
      ex = [r["examples_per_s"] for r in runs]
      step = [r["step_s"] for r in runs]
      mem = statistics.median(memory_gib(r) for r in runs)
      row = {"size": size, "system": system, "runs": len(runs),
             "examples_per_s": statistics.median(ex), "examples_per_s_min": min(ex),
             "examples_per_s_max": max(ex), "step_s": statistics.median(step),
             "memory_gib": round(mem, 3),
             "memory_kind": "device peak" if runs[0].get("peak_mem_gib") is not None
                            else "process peak RSS"}
      if system != "ours" and ours_ex:
        row["speed_ratio_ours_over_this"] = round(ours_ex / row["examples_per_s"], 3)
        row["memory_ratio_ours_over_this"] = round(ours_mem / mem, 3) if mem else None
      rows.append(row)
  return rows


def format_table(rows: Sequence[dict]) -> str:
  header = ("size", "system", "runs", "ex/s (median)", "ex/s range", "s/step",
            "memory GiB", "ours/this ex/s", "ours/this memory")
  lines = [header]
  for r in rows:
    lines.append((r["size"], r["system"], str(r["runs"]), f"{r['examples_per_s']:.2f}",
                  f"{r['examples_per_s_min']:.2f}-{r['examples_per_s_max']:.2f}",
                  f"{r['step_s']:.4f}", f"{r['memory_gib']:.2f} ({r['memory_kind']})",
                  str(r.get("speed_ratio_ours_over_this", "")),
                  str(r.get("memory_ratio_ours_over_this", "") or "")))
  return text_table(lines)


def write_jsonl(path: str, records: Sequence[dict]):
  """Every run's record, one JSON object a line."""
  with open(path, "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")


def text_table(lines: Sequence[Sequence[str]]) -> str:
  """Left-aligned columns; the first line is the header."""
  widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
  return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip()
                   for line in lines)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m ptuning_jax.projects.bench.compare",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes", default="tiny,small")
  p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
  p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=128)
  p.add_argument("--targets", type=int, default=8)
  p.add_argument("--prompt", type=int, default=20)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--warmup", type=int, default=3, help="our warm-up steps (PEFT: 5).")
  p.add_argument("--rounds", type=int, default=1)
  p.add_argument("--bench_args", default="",
                 help="extra arguments for our bench, e.g. '--remat full'.")
  p.add_argument("--peft_malloc", default="default", choices=("default", "tuned", "both"))
  p.add_argument("--peft_script", default=str(DEFAULT_PEFT_SCRIPT))
  p.add_argument("--taskset", default="",
                 help="CPU list to pin both processes to (taskset -c), e.g. '0'.")
  p.add_argument("--json_out", default="", help="also write every run's record here.")
  return p


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
  args = parser().parse_args(argv)
  script = pathlib.Path(args.peft_script)
  if not script.is_file():
    raise SystemExit(f"bench_compare: the PEFT baseline script {script} does not "
                     "exist; pass its path with --peft_script.")
  if args.rounds < 1:
    raise SystemExit(f"bench_compare: --rounds must be >= 1, got {args.rounds}.")
  if args.taskset and shutil.which("taskset") is None:
    raise SystemExit("bench_compare: --taskset needs the `taskset` command (util-linux).")
  records = []
  for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
    records += run_size(size, args, script)
  rows = summarize(records)
  print(format_table(rows))
  if args.json_out:
    write_jsonl(args.json_out, records)
  return rows


if __name__ == "__main__":
  main()
