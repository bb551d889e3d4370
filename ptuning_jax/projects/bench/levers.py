"""The effect of each speed and memory lever of `ptuning-jax bench`, measured.

  python -m ptuning_jax.projects.bench.levers --size small --dtype fp32 --batch 8 \\
      --inputs 128 --targets 8 --prompt 20 --steps 10 --rounds 2

  python -m ptuning_jax.projects.bench.levers --size xl --dtype bf16 --batch 32 \\
      --inputs 256 --targets 16 --prompt 100 --bench_args "--attention auto"

Runs the bench with every lever as the bench sets it (the baseline: the
`--dtype` given, no weight gradients, no remat, `--bench_args`' attention,
donated state, no host synchronisation, batches already on the device,
glibc's allocator tuned) and then with one lever changed at a time, each run
in a fresh subprocess, `--rounds` times with the order reversed every other
round. Prints, per variant: examples/s (median and range over rounds), its
ratio to the baseline (> 1 is faster than the baseline), peak memory (device
peak on an accelerator, process peak RSS on CPU) and its ratio (< 1 is
smaller). A variant the machine cannot run (cuDNN attention on a CPU, out of
memory) is reported with its error instead of failing the whole sweep.

The levers and what the changed run does:

  dtype            the other of bf16 / fp32 (bf16: bfloat16 frozen weights
                   and compute, float32 prompt and optimizer state)
  weight gradients `--weight_grads`: differentiate every frozen weight too
  remat            each policy of `t5.REMAT_POLICIES` other than "none"
  attention        each implementation of `t5.ATTENTION_IMPLS` other than the
                   baseline's ("cudnn" and "auto" need a GPU to differ)
  donation         `--no_donate`
  host sync        `--host_sync`: read the loss on the host every step
  input feed       `--feed host` (numpy batches), `--feed prefetch`
  allocator        `--default_malloc` (matters on CPU only)
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from typing import Optional, Sequence

from ptuning_jax.projects.bench import compare
from ptuning_jax.backbones import t5  # names only: every run is a subprocess


def _flag_value(args: Sequence[str], flag: str, default: str) -> str:
  for i, arg in enumerate(args):
    if arg == flag and i + 1 < len(args):
      return args[i + 1]
    if arg.startswith(flag + "="):
      return arg.split("=", 1)[1]
  return default


def variants(dtype: str, bench_args: Sequence[str]) -> list[tuple[str, str, list[str]]]:
  """(lever, variant name, extra bench arguments) for the baseline and each
  one-lever change. Later arguments override `bench_args`."""
  other = "fp32" if dtype == "bf16" else "bf16"
  attention = _flag_value(bench_args, "--attention", "xla")
  out = [("baseline", "every lever on", [])]
  out.append(("dtype", f"{other} instead of {dtype}", ["--dtype", other]))
  out.append(("weight gradients", "also differentiate frozen weights", ["--weight_grads"]))
  out += [("remat", f"--remat {p}", ["--remat", p])
          for p in t5.REMAT_POLICIES if p != "none"]
  out += [("attention", f"--attention {a}", ["--attention", a])
          for a in t5.ATTENTION_IMPLS if a != attention]
  out.append(("donation", "state not donated", ["--no_donate"]))
  out.append(("host sync", "loss read every step", ["--host_sync"]))
  out.append(("input feed", "numpy batches fed each step", ["--feed", "host"]))
  out.append(("input feed", "prefetch to device", ["--feed", "prefetch"]))
  out.append(("allocator", "glibc defaults", ["--default_malloc"]))
  return out


def run_variant(args: argparse.Namespace, lever: str, name: str,
                extra: Sequence[str]) -> dict:
  """One run; a record with `error` (the run's own words) if it failed."""
  cmd = compare.ours_command(args.size, args) + list(extra)
  record, rss, tail = compare.run_child(cmd)
  if record is None or "step_s" not in record:
    record = {"error": (record or {}).get("error") or _error_line(tail)}
  record.update(lever=lever, variant=name, child_peak_rss_gib=round(rss, 3))
  return record


def _error_line(output: str) -> str:
  """The exception line of a failed run's output (else its last line)."""
  lines = [l.strip() for l in output.strip().splitlines() if l.strip()]
  errors = [l for l in lines if re.match(r"^[\w.]*(Error|Exception)\b", l)]
  return (errors or lines or ["no output"])[-1]


def selected(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
  """The baseline and the variants of the levers named in `--levers`."""
  todo = variants(args.dtype, args.bench_args.split())
  if not args.levers:
    return todo
  names = [n.strip() for n in args.levers.split(",") if n.strip()]
  known = list(dict.fromkeys(lever for lever, _, _ in todo[1:]))
  unknown = [n for n in names if n not in known]
  if unknown:
    raise SystemExit(f"bench_levers: --levers {unknown} unknown; expected names "
                     f"from {known}.")
  return [todo[0]] + [v for v in todo[1:] if v[0] in names]


def run_all(args: argparse.Namespace) -> list[dict]:
  todo = selected(args)
  records = []
  for r in range(args.rounds):
    for lever, name, extra in (todo if r % 2 == 0 else todo[::-1]):
      record = dict(run_variant(args, lever, name, extra), round=r)
      print(json.dumps(record), file=sys.stderr, flush=True)
      records.append(record)
  return records


def summarize(records: Sequence[dict]) -> list[dict]:
  """One row per variant, in the sweep's order; ratios against the baseline."""
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in records:
    groups.setdefault((r["lever"], r["variant"]), []).append(r)
  base = [r for r in groups.get(("baseline", "every lever on"), []) if "error" not in r]
  base_ex = statistics.median(r["examples_per_s"] for r in base) if base else None
  base_mem = statistics.median(compare.memory_gib(r) for r in base) if base else None
  rows = []
  for (lever, name), runs in groups.items():
    ok = [r for r in runs if "error" not in r]
    row = {"lever": lever, "variant": name, "runs": len(ok)}
    if not ok:
      row["error"] = runs[-1]["error"]
      rows.append(row)
      continue
    ex = [r["examples_per_s"] for r in ok]
    mem = statistics.median(compare.memory_gib(r) for r in ok)
    row.update(examples_per_s=statistics.median(ex), examples_per_s_min=min(ex),
               examples_per_s_max=max(ex), memory_gib=round(mem, 3),
               memory_kind="device peak" if ok[0].get("peak_mem_gib") is not None
               else "process peak RSS")
    if base_ex:
      row["speed_vs_baseline"] = round(row["examples_per_s"] / base_ex, 3)
    if base_mem:
      row["memory_vs_baseline"] = round(mem / base_mem, 3)
    rows.append(row)
  return rows


def format_table(rows: Sequence[dict]) -> str:
  """The table, then one line per variant that failed, with its error."""
  lines = [("lever", "variant", "runs", "ex/s (median)", "ex/s range", "vs baseline",
            "memory GiB", "memory vs baseline")]
  failed = []
  for r in rows:
    if "error" in r:
      failed.append(f"{r['lever']} / {r['variant']}: {r['error']}")
      lines.append((r["lever"], r["variant"], "0", "failed", "", "", "", ""))
      continue
    lines.append((r["lever"], r["variant"], str(r["runs"]),
                  f"{r['examples_per_s']:.2f}",
                  f"{r['examples_per_s_min']:.2f}-{r['examples_per_s_max']:.2f}",
                  str(r.get("speed_vs_baseline", "")),
                  f"{r['memory_gib']:.2f} ({r['memory_kind']})",
                  str(r.get("memory_vs_baseline", ""))))
  return "\n".join([compare.text_table(lines)] + failed)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m ptuning_jax.projects.bench.levers",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--size", default="small")
  p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=128)
  p.add_argument("--targets", type=int, default=8)
  p.add_argument("--prompt", type=int, default=20)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--rounds", type=int, default=1)
  p.add_argument("--bench_args", default="",
                 help="baseline arguments for every run, e.g. '--attention auto'.")
  p.add_argument("--levers", default="",
                 help="comma-separated levers to measure (default: all), e.g. "
                      "'dtype,remat'; the baseline always runs.")
  p.add_argument("--json_out", default="", help="also write every run's record here.")
  return p


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
  args = parser().parse_args(argv)
  if args.rounds < 1:
    raise SystemExit(f"bench_levers: --rounds must be >= 1, got {args.rounds}.")
  records = run_all(args)
  rows = summarize(records)
  print(format_table(rows))
  if args.json_out:
    compare.write_jsonl(args.json_out, records)
  return rows


if __name__ == "__main__":
  main()
