"""Our BERT-family classifier and PyTorch / PEFT's, on one machine, with ratios.

  python -m ptuning_jax.projects.bench.compare_bert \\
      --methods prompt_tuning,full_finetune --batch 16 --length 48 --prompt 20 \\
      --steps 30 --rounds 3 [--side_by_side] [--taskset 0 [--peer_taskset 1]]

  python -m ptuning_jax.projects.bench.compare_bert --accuracy \\
      --methods prompt_tuning --train_steps 1500

For each method and round, runs our arm (`bench_bert`: the common run
path's jitted train step) and the peer (`--peft_script`, default
`peft_bert_baseline.py` beside this file: transformers'
`AutoModelForSequenceClassification` with PEFT prompt tuning or plain full
fine-tuning, torch AdamW) in fresh subprocesses on the same batches, and
prints a table: examples/s of each (median over rounds, with the range),
the ratio ours / peer (> 1: ours is faster), the trainable parameters of
each, peak resident set sizes (`ru_maxrss` from `os.wait4`: whole process)
and their ratio (< 1: ours is smaller).

Load conditions:
  alone (default)  the two arms one after the other, alternating which goes
                   first: each has the machine to itself.
  --side_by_side   both at once, as a user running both would: each warms
                   up, waits at a barrier (`--sync_dir` of the arms), both
                   start timing together, and the one that finishes first
                   keeps stepping (untimed) until the other has finished, so
                   both timed windows are fully contended.
  --taskset CPUS   pins both arms to CPUS (`taskset -c`); with
                   --peer_taskset the peer gets its own CPUs, e.g. one core
                   each side by side (`--taskset 0 --peer_taskset 1`).
  --peer_threads N torch's intra-op threads (default: one per core). Its
                   OpenMP threads spin while they wait, which costs it dearly
                   when two processes share the cores; side by side,
                   `--peer_threads 1` is the peer's best setting here.

Batches (`write_batches`, one .npz both arms read): `--batches sst2` (the
default) takes the first N training batches of SST-2 as a run sees them
(`data.classification.ClassificationData` of `--data_dir`, the checkpoint's
tokenizer, padded to `--length`, shuffled with `--seed`); `--batches
random` draws fixed random batches of real word-piece ids (no special
tokens, random lengths) from the checkpoint's vocabulary, for machines
without the data.

`--accuracy` trains each arm alone for `--train_steps` steps (seed
`--seed`, linear decay to 0 over them) on the same SST-2 batches and scores
the full dev set: dev accuracy of each and the difference in points.

Dimension letters: N batches, B batch, T length, P prompt length.
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
import tempfile
import time
from typing import Optional, Sequence

import numpy as np

from ptuning_jax.projects.bench import compare

REPO = pathlib.Path(__file__).resolve().parents[3]
DEFAULT_PEFT_SCRIPT = pathlib.Path(__file__).with_name("peft_bert_baseline.py")
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
METHODS = ("prompt_tuning", "full_finetune")
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
BATCH_SOURCES = ("sst2", "random")
FIRST_WORD_ID = 1996  # BERT's first real word piece ("the")


# ------------------------------------------------------------------ batches


def write_batches(path: str, *, source: str, checkpoint_dir: str, batch: int,
                  length: int, count: int, seed: int = 0,
                  data_dir: Optional[str] = None, dev: bool = False) -> dict:
  """Writes the batches file both arms read; returns its arrays.

  Args:
    path: the .npz to write.
    source: "sst2" (the first `count` training batches of a run's SST-2
      iterator, seed `seed`) or "random" (fixed random word-piece ids).
    checkpoint_dir: the checkpoint (its tokenizer / vocabulary size).
    batch, length: B, T.
    count: N batches.
    seed: shuffling / sampling seed.
    data_dir: directory with glue/sst2 ("sst2").
    dev: also write the SST-2 dev set as dev_* arrays [D, T] ("sst2" only).
  Returns:
    input_ids, attention_mask, token_type_ids [N, B, T], label [N, B]
    (int32), num_classes, and dev_* with `dev`.
  """
  if source == "sst2":
    from ptuning_jax.data import classification  # pylint: disable=g-import-not-at-top
    data = classification.ClassificationData("sst2", str(data_dir), checkpoint_dir,
                                             max_length=length, batch_size=batch,
                                             seed=seed)
    iterator = data.train_iterator()
    batches = [next(iterator) for _ in range(count)]
    arrays = {k: np.stack([b[k] for b in batches]).astype(np.int32)
              for k in INPUT_KEYS + ("label",)}
    if dev:
      arrays.update({f"dev_{k}": v.astype(np.int32) for k, v in data.eval.arrays.items()
                     if k in INPUT_KEYS + ("label",)})
  elif source == "random":
    if dev:
      raise ValueError("write_batches: dev arrays need source='sst2'.")
    arrays = random_batches(checkpoint_dir, batch, length, count, seed)
  else:
    raise ValueError(f"write_batches: source={source!r}; expected one of {BATCH_SOURCES}.")
  arrays["num_classes"] = np.asarray(2)
  np.savez(path, **arrays)
  return arrays


def random_batches(checkpoint_dir: str, batch: int, length: int, count: int,
                   seed: int = 0) -> dict:
  """Fixed random batches: rows of random lengths in [T / 4, T] of word-piece
  ids drawn from [1996, V) (from 3 in a smaller vocabulary), padded with the
  checkpoint's pad id; segment 0; random binary labels."""
  config = json.loads((pathlib.Path(checkpoint_dir) / "config.json").read_text())
  vocab, pad = int(config["vocab_size"]), int(config.get("pad_token_id", 0))
  first = FIRST_WORD_ID if vocab > FIRST_WORD_ID else 3
  rng = np.random.default_rng(seed)
  lengths = rng.integers(max(1, length // 4), length + 1, (count, batch))
  mask = (np.arange(length) < lengths[..., None]).astype(np.int32)  # [N, B, T]
  ids = np.where(mask, rng.integers(first, vocab, mask.shape), pad).astype(np.int32)
  return {"input_ids": ids, "attention_mask": mask,
          "token_type_ids": np.zeros_like(ids),
          "label": rng.integers(0, 2, (count, batch)).astype(np.int32)}


# --------------------------------------------------------------- commands


def arm_args(method: str, args: argparse.Namespace, batches: str, steps: int,
             warmup: int) -> list[str]:
  """The flags both arms share."""
  out = ["--batches", batches, "--method", method, "--prompt", str(args.prompt),
         "--steps", str(steps), "--warmup", str(warmup), "--seed", str(args.seed),
         "--total_steps", str(steps + warmup)]
  if args.checkpoint_dir:
    out += ["--checkpoint_dir", args.checkpoint_dir]
  return out


def ours_command(method: str, args: argparse.Namespace, batches: str, steps: int,
                 warmup: int) -> list[str]:
  return ([sys.executable, "-m", "ptuning_jax.projects.bench.bench_bert"]
          + arm_args(method, args, batches, steps, warmup) + args.bench_args.split())


def peer_command(script: pathlib.Path, method: str, args: argparse.Namespace,
                 batches: str, steps: int, warmup: int) -> list[str]:
  threads = ["--threads", str(args.peer_threads)] if args.peer_threads else []
  return [sys.executable, str(script)] + arm_args(method, args, batches, steps,
                                                  warmup) + threads


def _pin(cpus: str) -> list[str]:
  return ["taskset", "-c", cpus] if cpus else []


# ------------------------------------------------------------------- running


def _finish(system: str, cmd: list[str], record: Optional[dict], rss: float,
            tail: str, load: float, start: float) -> dict:
  if record is None or "step_s" not in record or record.get("exit_code", 0):
    raise RuntimeError(f"{system} run failed: {' '.join(cmd)}\n{tail}")
  record.update(system=system, child_peak_rss_gib=round(rss, 3),
                load_before=round(load, 2), wall_s=round(time.time() - start, 1))
  return record


def run_alone(system: str, cmd: list[str]) -> dict:
  load, start = os.getloadavg()[0], time.time()
  record, rss, tail = compare.run_child(cmd)
  return _finish(system, cmd, record, rss, tail, load, start)


def _parse(output: str) -> Optional[dict]:
  records = [json.loads(line) for line in output.splitlines()
             if line.startswith("{") and line.rstrip().endswith("}")]
  return records[-1] if records else None


def run_side_by_side(named: Sequence[tuple[str, list[str]]], sync_dir: str,
                     timeout_s: float = 3600.0) -> list[dict]:
  """Starts every (system, command) at once with `--sync_dir sync_dir`;
  releases the barrier (`go`) when all are warmed up and `stop` when all
  have timed their steps. Returns their records (peak RSS each)."""
  load, start = os.getloadavg()[0], time.time()
  procs = []
  for system, cmd in named:
    out = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd + ["--sync_dir", sync_dir], stdout=out,
                            stderr=subprocess.STDOUT, text=True)
    procs.append((system, cmd, proc, out))
  names = {"ours" if system == "ours" else "peft" for system, _ in named}
  sync = pathlib.Path(sync_dir)
  for stage, flag in (("ready", "go"), ("done", "stop")):
    while not all((sync / f"{stage}.{n}").exists() for n in names):
      if any(p.poll() is not None for _, _, p, _ in procs) or time.time() - start > timeout_s:
        break  # an arm died (or hung): release the others, report below
      time.sleep(0.05)
    (sync / flag).touch()
  records = []
  for system, cmd, proc, out in procs:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    output = out.read()
    out.close()
    record = _parse(output)
    if record is not None:
      record["exit_code"] = proc.returncode
    records.append(_finish(system, cmd, record, usage.ru_maxrss * 1024 / 2**30,
                           output[-2000:], load, start))
  return records


def peer_name(method: str) -> str:
  return "peft" if method == "prompt_tuning" else "torch"


def run_method(method: str, args: argparse.Namespace, script: pathlib.Path,
               batches: str) -> list[dict]:
  """All rounds of one method; alone, the arms alternate which runs first."""
  ours = _pin(args.taskset) + ours_command(method, args, batches, args.steps, args.warmup)
  peer = _pin(args.peer_taskset or args.taskset) + peer_command(
      script, method, args, batches, args.steps, args.warmup)
  systems = [("ours", ours), (peer_name(method), peer)]
  records = []
  for r in range(args.rounds):
    if args.side_by_side:
      with tempfile.TemporaryDirectory() as sync_dir:
        round_records = run_side_by_side(systems, sync_dir)
    else:
      order = systems if r % 2 == 0 else systems[::-1]
      round_records = [run_alone(name, cmd) for name, cmd in order]
    for record in round_records:
      record.update(round=r, method=method,
                    load="side by side" if args.side_by_side else "alone")
      print(json.dumps(record), file=sys.stderr, flush=True)
      records.append(record)
  return records


def summarize(records: Sequence[dict]) -> list[dict]:
  """`compare.summarize` by method, plus each system's trainable params."""
  rows = compare.summarize([dict(r, size=r["method"]) for r in records])
  for row in rows:
    mine = [r for r in records if r["method"] == row["size"] and r["system"] == row["system"]]
    row["method"] = row.pop("size")
    row["trainable_params"] = mine[0].get("trainable_params")
  return rows


def format_table(rows: Sequence[dict]) -> str:
  header = ("method", "system", "runs", "ex/s (median)", "ex/s range", "s/step",
            "trainable", "peak RSS GiB", "ours/this ex/s", "ours/this RSS")
  lines = [header]
  for r in rows:
    lines.append((r["method"], r["system"], str(r["runs"]), f"{r['examples_per_s']:.2f}",
                  f"{r['examples_per_s_min']:.2f}-{r['examples_per_s_max']:.2f}",
                  f"{r['step_s']:.4f}", str(r["trainable_params"]),
                  f"{r['memory_gib']:.2f}",
                  str(r.get("speed_ratio_ours_over_this", "")),
                  str(r.get("memory_ratio_ours_over_this", "") or "")))
  return compare.text_table(lines)


def accuracy(args: argparse.Namespace, script: pathlib.Path, methods: Sequence[str],
             tmp: str) -> list[dict]:
  """Each method: both arms alone for --train_steps, then dev accuracy."""
  path = os.path.join(tmp, "accuracy_batches.npz")
  write_batches(path, source="sst2", checkpoint_dir=_checkpoint(args), batch=args.batch,
                length=args.length, count=args.train_steps, seed=args.seed,
                data_dir=args.data_dir, dev=True)
  rows = []
  for method in methods:
    steps = args.train_steps - 1
    arms = [("ours", ours_command(method, args, path, steps, 1)),
            (peer_name(method), peer_command(script, method, args, path, steps, 1))]
    records = {name: run_alone(name, cmd + ["--eval"]) for name, cmd in arms}
    for name, record in records.items():
      print(json.dumps(dict(record, method=method)), file=sys.stderr, flush=True)
    ours, peer = records["ours"], records[peer_name(method)]
    rows.append({"method": method, "train_steps": args.train_steps, "seed": args.seed,
                 "ours_dev_accuracy": ours["dev_accuracy"],
                 "peer_dev_accuracy": peer["dev_accuracy"],
                 "difference_points": round(100 * (ours["dev_accuracy"]
                                                   - peer["dev_accuracy"]), 2),
                 "ours_train_s": ours["train_s"], "peer_train_s": peer["train_s"],
                 "dev_examples": ours["dev_examples"]})
  lines = [("method", "steps", "ours dev acc", "peer dev acc", "ours - peer (points)",
            "ours train s", "peer train s")]
  lines += [(r["method"], str(r["train_steps"]), f"{100 * r['ours_dev_accuracy']:.2f}",
             f"{100 * r['peer_dev_accuracy']:.2f}", f"{r['difference_points']:+.2f}",
             str(r["ours_train_s"]), str(r["peer_train_s"])) for r in rows]
  print(compare.text_table(lines))
  return rows


def _checkpoint(args: argparse.Namespace) -> str:
  if args.checkpoint_dir:
    return args.checkpoint_dir
  from ptuning_jax.backbones.hf import bert as hf_bert  # pylint: disable=g-import-not-at-top
  return str(hf_bert.all_minilm_l6_v2_dir())


# ---------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m ptuning_jax.projects.bench.compare_bert",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--methods", default="prompt_tuning,full_finetune")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--length", type=int, default=48)
  p.add_argument("--prompt", type=int, default=20)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--warmup", type=int, default=3, help="both arms' untimed steps.")
  p.add_argument("--rounds", type=int, default=1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batches", default="sst2", choices=BATCH_SOURCES)
  p.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR))
  p.add_argument("--checkpoint_dir", default="",
                 help="a BERT-family HF checkpoint (default: all-MiniLM-L6-v2).")
  p.add_argument("--side_by_side", action="store_true",
                 help="run both arms at once, timed windows aligned.")
  p.add_argument("--taskset", default="", help="CPUs for both arms (taskset -c).")
  p.add_argument("--peer_taskset", default="", help="CPUs for the peer only.")
  p.add_argument("--peer_threads", type=int, default=0,
                 help="the peer's torch threads (default: torch's own choice).")
  p.add_argument("--bench_args", default="", help="extra arguments for our arm.")
  p.add_argument("--peft_script", default=str(DEFAULT_PEFT_SCRIPT))
  p.add_argument("--accuracy", action="store_true",
                 help="train both arms --train_steps and compare dev accuracy.")
  p.add_argument("--train_steps", type=int, default=1500)
  p.add_argument("--json_out", default="", help="also write every run's record here.")
  return p


def _check(args: argparse.Namespace, script: pathlib.Path, methods: list[str]):
  if not script.is_file():
    raise SystemExit(f"compare_bert: the peer script {script} does not exist; pass "
                     "its path with --peft_script.")
  bad = [m for m in methods if m not in METHODS]
  if bad or not methods:
    raise SystemExit(f"compare_bert: --methods {args.methods!r}; expected a "
                     f"comma-separated subset of {METHODS}.")
  for name in ("rounds", "steps", "warmup", "batch", "length"):
    if getattr(args, name) < 1:
      raise SystemExit(f"compare_bert: --{name} must be >= 1, got {getattr(args, name)}.")
  if (args.taskset or args.peer_taskset) and shutil.which("taskset") is None:
    raise SystemExit("compare_bert: --taskset needs the `taskset` command (util-linux).")
  if (args.batches == "sst2" or args.accuracy) and not (
      pathlib.Path(args.data_dir) / "glue" / "sst2").is_dir():
    raise SystemExit(f"compare_bert: {args.data_dir}/glue/sst2 does not exist; pass "
                     "--data_dir, or --batches random for a speed comparison.")


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
  args = parser().parse_args(argv)
  script = pathlib.Path(args.peft_script)
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  _check(args, script, methods)
  with tempfile.TemporaryDirectory() as tmp:
    if args.accuracy:
      return accuracy(args, script, methods, tmp)
    batches = os.path.join(tmp, "batches.npz")
    write_batches(batches, source=args.batches, checkpoint_dir=_checkpoint(args),
                  batch=args.batch, length=args.length, count=args.warmup + args.steps,
                  seed=args.seed, data_dir=args.data_dir)
    records = []
    for method in methods:
      records += run_method(method, args, script, batches)
  rows = summarize(records)
  print(format_table(rows))
  if args.json_out:
    compare.write_jsonl(args.json_out, records)
  return rows


if __name__ == "__main__":
  main()
