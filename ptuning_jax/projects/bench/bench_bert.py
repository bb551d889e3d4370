"""Our arm of `compare_bert`: a BERT-family classifier's train step through
the common run path.

  python -m ptuning_jax.projects.bench.bench_bert --batches B.npz \\
      --method prompt_tuning --prompt 20 --steps 30 --warmup 3

Times the step every `ptuning-jax train` of a BERT-family classification
task runs: `run.build_run` (the backbone loaded from its checkpoint, the
registered method built from the backbone's hook spec, `models.build`'s
`ClassifierModel`, `optimizers.build_optimizer`, the `Trainer`'s jitted,
donated, sharded `train_step`), fed through `Trainer.place_batch` as
`run.train` feeds it. Nothing here is a special path: the method and
optimizer come from the MiniLM study's own factories
(`method_comparison.method_factory`, `optimizer_config`).

What it trains, as `peft_bert_baseline.py` does (the other arm):
`all-MiniLM-L6-v2` (or `--checkpoint_dir`) with encoder dropout 0.1 and
HF's `BertForSequenceClassification` head (the [CLS] position through the
frozen tanh pooler, dropout 0.1, a fresh linear classifier:
`heads.ClassificationHead(pooling="cls", use_pooler=True)`); AdamW without
weight decay, linear decay to 0 over `--total_steps`.
  prompt_tuning  `SoftPrompt` of P vectors sampled from word pieces
                 [1996, 6996) (the study's init), trained with the head;
  full_finetune  every backbone parameter and the head.

Batches: the .npz `compare_bert.write_batches` writes (step i takes batch
i mod N); `--eval` scores the `dev_*` arrays with `evaluation.evaluate`.

Timing: `--warmup` steps (>= 1; the first compiles), then `--steps` timed
steps (dispatched without host synchronisation, as `run.train` does; the
final state is awaited); `cpu_s_per_step` is the process's CPU time (all
threads) per timed step. `--sync_dir` lines the timed window up with the
other arm's for a side-by-side run (`wait_for_start`, `keep_busy`).

Dimension letters: N batches, B batch, T length, P prompt length, D dev
examples, C classes.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import resource
import sys
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

METHODS = ("prompt_tuning", "full_finetune")
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
# Learning rates of the MiniLM study (configs/minilm_method_comparison.gin).
LEARNING_RATES = {"prompt_tuning": 1e-2, "full_finetune": 2e-5}
HEAD_LEARNING_RATES = {"full_finetune": 1e-3}


# ----------------------------------------------------- side-by-side barrier
# (the same few lines are in peft_bert_baseline.py, which imports nothing of
# ours)


def wait_for_start(sync_dir: Optional[str], name: str, timeout_s: float = 1800.0):
  """Says `name` is warmed up (`ready.<name>`), then waits for `go`."""
  if not sync_dir:
    return
  pathlib.Path(sync_dir, f"ready.{name}").touch()
  deadline = time.time() + timeout_s
  while not pathlib.Path(sync_dir, "go").exists():
    if time.time() > deadline:
      raise SystemExit(f"{name}: no 'go' in {sync_dir} after {timeout_s:.0f} s.")
    time.sleep(0.01)


def keep_busy(sync_dir: Optional[str], name: str, step: Callable[[], Any],
              timeout_s: float = 1800.0):
  """Says `name` has finished timing (`done.<name>`), then keeps stepping
  (untimed) until `stop`, so the other arm's window stays contended."""
  if not sync_dir:
    return
  pathlib.Path(sync_dir, f"done.{name}").touch()
  deadline = time.time() + timeout_s
  while not pathlib.Path(sync_dir, "stop").exists() and time.time() < deadline:
    step()


# --------------------------------------------------------------- the run


class BatchesData:
  """A run data object over the batches file (`run.build_run`'s protocol:
  task_kind, num_classes, batch_size, vocab; `eval_data` for `--eval`)."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays
    self.num_batches, self.batch_size, self.max_length = arrays["input_ids"].shape
    self.num_classes = int(arrays.get("num_classes", 2))
    self.task_kind, self.vocab = "classification", None

  @property
  def feature_lengths(self) -> dict:
    return {"inputs": self.max_length}

  def batch(self, index: int) -> dict[str, np.ndarray]:
    i = index % self.num_batches
    return {k: self.arrays[k][i] for k in INPUT_KEYS + ("label",)}

  def eval_data(self, split: str = "validation", max_examples=None):
    from ptuning_jax.data import glue  # pylint: disable=g-import-not-at-top
    from ptuning_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    from ptuning_jax.training import evaluation  # pylint: disable=g-import-not-at-top
    del split, max_examples
    if "dev_label" not in self.arrays:
      raise ValueError("bench_bert --eval: the batches file has no dev_* arrays "
                       "(write it with compare_bert --accuracy).")
    dataset = pipeline.ArrayDataset({k: self.arrays[f"dev_{k}"]
                                     for k in INPUT_KEYS + ("label",)})
    labels = dataset.arrays["label"]
    return evaluation.EvalData(dataset, compute_output_metrics=lambda o: (
        glue.compute_metrics(glue.get_task("sst2"), o, labels)))


def build(args: argparse.Namespace, data: BatchesData):
  """`run.build_run` for the method, as the MiniLM study configures it."""
  # pylint: disable=g-import-not-at-top
  from ptuning_jax import backbones
  from ptuning_jax import models
  from ptuning_jax.models import heads
  from ptuning_jax.projects import method_comparison as mc
  from ptuning_jax.training import run as run_lib
  total = args.total_steps or (args.warmup + args.steps)
  config = mc.ExperimentConfig(
      tasks=("sst2",), methods=(args.method,), seeds=(args.seed,), train_steps=total,
      batch_size=data.batch_size, max_lengths={"sst2": data.max_length},
      learning_rates={args.method: args.lr or LEARNING_RATES[args.method]},
      head_learning_rates={args.method: args.head_lr} if args.head_lr else
      {k: v for k, v in HEAD_LEARNING_RATES.items() if k == args.method},
      prompt_length=args.prompt, checkpoint_dir=args.checkpoint_dir,
      dropout_rate=0.1, pooling="cls", use_pooler=True)
  spec = config.backbone_spec()
  hook_spec = spec.family.hook_spec(spec.resolve_config())
  method = mc.method_factory(args.method, config, "sst2", hook_spec.embed_dim,
                             hook_spec.vocab_size)
  optimizer = mc.optimizer_config(args.method, config, total)
  head = functools.partial(heads.ClassificationHead, pooling="cls", use_pooler=True,
                           dropout_rate=0.1)
  return run_lib.build_run(backbone=spec, method=method, data=data,
                           optimizer=optimizer, seed=args.seed,
                           mesh=run_lib.MeshConfig(data=1),
                           model=functools.partial(models.build, head=head))


def run_benchmark(args: argparse.Namespace) -> dict:
  """Builds, warms up, times (and with --eval scores); returns the record."""
  # pylint: disable=g-import-not-at-top
  import jax
  from ptuning_jax.training import cpu_speed
  from ptuning_jax.training import evaluation
  from ptuning_jax.training import run as run_lib
  if args.threefry == "unrolled":
    cpu_speed.unroll_threefry()  # as `ptuning-jax` (cli.main) does
  with np.load(args.batches) as f:
    data = BatchesData({k: f[k] for k in f.files})
  run = build(args, data)
  trainer, frozen = run.trainer, run.frozen
  report = run_lib.parameter_report(run)
  state, index = run.state, 0

  def step():
    nonlocal state, index
    state, metrics = trainer.train_step(state, frozen,
                                        trainer.place_batch(data.batch(index)))
    index += 1
    return metrics

  start = time.perf_counter()
  first = time.perf_counter()
  jax.block_until_ready(step())
  first_s = time.perf_counter() - first
  for _ in range(args.warmup - 1):
    step()
  jax.block_until_ready(state)
  wait_for_start(args.sync_dir, "ours")
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(args.steps):
    metrics = step()
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t0) / args.steps
  cpu_s = (time.process_time() - c0) / args.steps
  train_s = time.perf_counter() - start
  keep_busy(args.sync_dir, "ours", lambda: jax.block_until_ready(step()))
  record = dict(
      system="ptuning_jax", method=args.method, batch=data.batch_size,
      length=data.max_length, prompt=args.prompt if args.method == "prompt_tuning" else 0,
      frozen_params=report["frozen_params"], trainable_params=report["trainable_params"],
      step_s=round(step_s, 5), cpu_s_per_step=round(cpu_s, 5), examples_per_s=round(data.batch_size / step_s, 2),
      loss=float(metrics["loss"]), steps=args.steps, warmup=args.warmup,
      first_step_s=round(first_s, 2), jax=jax.__version__,
      device=jax.devices()[0].device_kind, peak_mem_gib=None,
      peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3))
  record["tokens_per_s"] = round(data.batch_size * (data.max_length + record["prompt"])
                                 / step_s, 1)
  if args.eval:
    scores = evaluation.evaluate(run, state.params, evaluation.EvalConfig(
        mode="classify", batch_size=64, best_metric="accuracy"))
    record.update(dev_accuracy=scores["accuracy"] / 100.0, train_s=round(train_s, 1),
                  dev_examples=int(data.arrays["dev_label"].shape[0]))
  return record


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m ptuning_jax.projects.bench.bench_bert",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--batches", required=True, help="the .npz of compare_bert.")
  p.add_argument("--method", default="prompt_tuning", choices=METHODS)
  p.add_argument("--checkpoint_dir", default=None,
                 help="a BERT-family HF checkpoint (default: all-MiniLM-L6-v2).")
  p.add_argument("--prompt", type=int, default=20)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--lr", type=float, default=None,
                 help="default: the MiniLM study's rate of the method.")
  p.add_argument("--head_lr", type=float, default=None)
  p.add_argument("--total_steps", type=int, default=None,
                 help="linear decay horizon (default: warmup + steps).")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval", action="store_true", help="dev accuracy after training.")
  p.add_argument("--sync_dir", default="", help="side-by-side barrier directory.")
  p.add_argument("--threefry", default="unrolled", choices=("unrolled", "rolled"),
                 help="dropout PRNG lowering: the CLI's (cpu_speed.unroll_threefry) "
                      "or jax's default rolled loop (lever check; same masks).")
  return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parser().parse_args(argv)
  if args.warmup < 1 or args.steps < 1:
    raise SystemExit(f"bench_bert: --warmup and --steps must be >= 1 (got "
                     f"{args.warmup}, {args.steps}); the first step compiles.")
  if not os.path.isfile(args.batches):
    raise SystemExit(f"bench_bert: --batches {args.batches} does not exist.")
  record = run_benchmark(args)
  print(json.dumps(record), flush=True)
  return record


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
