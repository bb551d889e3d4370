"""`ptuning-jax bench`: training-step throughput of soft prompt tuning.

  ptuning-jax bench --size base --batch 32 --inputs 256 --targets 16 \\
      --prompt 100 --steps 30 --warmup 3 --dtype bf16 [--remat dots_saveable] \\
      [--attention auto] [--mesh_data -1 --mesh_model 1 --fsdp] \\
      [--microbatches 1] [--sizes base,large,xl]

Measures what `../shared/bench/peft_t5_baseline.py` (beside the repo) measures for
Hugging Face PEFT, at the same shapes: a random-weight T5 1.1 backbone (no
download, no TensorFlow), a `SoftPrompt` of P vectors prepended on the
encoder side, Adafactor (lr 0.3) on the prompt only, one synthetic batch.

Method:
  * the batch is generated once and placed on the devices before the timed
    loop (`--feed host` / `--feed prefetch` measure host feeding instead);
  * `--warmup` steps (>= 1; the first compiles) are excluded;
  * the timed loop only dispatches steps (no host synchronisation unless
    `--host_sync`); `jax.block_until_ready` on the final state and metrics
    stops the clock; `--repeats R` times R such blocks and reports the
    median (and min / max) seconds per step;
  * the state is donated to the step (`--no_donate` turns it off); the
    report says whether the donated buffers were actually reused;
  * glibc's allocator is told to keep and reuse the step's host buffers
    (`keep_freed_memory`; `--default_malloc` turns it off). This matters on
    CPU, where XLA's temporaries are host memory.

One JSON line per configuration. Fields shared with the PEFT script:
`system, size, dtype, batch, inputs, targets, prompt, frozen_params,
trainable_params, step_s, examples_per_s, tokens_per_s (B * (T + P + S) /
step_s), device, peak_mem_gib, loss`; plus `model_flops_per_step` (see
`flops`: 2 x forward, prompt included, attention included),
`model_tflops_per_s`, `mfu` (against `PEAK_BF16_FLOPS` x devices; null where
the device kind is not in the table, e.g. CPU), `traced_dot_flops_per_step`
(matmul FLOPs of the jaxpr of the real step: backward, remat recomputation
and all), the configuration and timing details.

`--lower_only` traces and lowers the step with abstract weights instead
(`lower`): a configuration check that fits any machine, with exact counts
only (parameters, weight bytes, FLOPs), no time or memory figure.
`--weight_grads` also differentiates every frozen weight: the counterfactual
of the "no weight gradients" lever (`bench_levers` sweeps all the levers).

Memory: `peak_mem_gib` is the largest `device.memory_stats()
["peak_bytes_in_use"]` over the local devices (GPU/TPU); CPU devices have no
memory stats, so it is null there, as in the PEFT script. `peak_rss_gib` is
the process's peak resident set size (whole process: Python, XLA runtime,
host copies), the only comparable CPU figure (`bench_compare` measures the
PEFT process's the same way). Peaks only grow within a process, so several
configurations (`--sizes`) each run in their own subprocess.

Dimension letters: B batch, T input length, P prompt length, S target
length, H d_model, V vocabulary.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import datetime
import functools
import itertools
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from typing import Any, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from ptuning_jax import backbones  # noqa: E402
from ptuning_jax.projects.bench import flops  # noqa: E402
from ptuning_jax.data import pipeline  # noqa: E402
from ptuning_jax.models import seq2seq  # noqa: E402
from ptuning_jax.training import optimizers  # noqa: E402
from ptuning_jax.training import partitioning  # noqa: E402
from ptuning_jax.methods import initializers  # noqa: E402
from ptuning_jax.methods import prompt_tuning  # noqa: E402
from ptuning_jax.backbones import t5  # noqa: E402
from ptuning_jax.training import trainer as trainer_lib  # noqa: E402

# Dense bfloat16 peak FLOP/s per device, by a case-insensitive substring of
# `device.device_kind`; the first match wins (so "H100 PCIe" before "H100").
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
)

# The PEFT script's "tiny" preset (not t5.SIZES["tiny"], the odd test model).
PEFT_TINY = t5.T5Config(d_model=64, d_ff=128, num_encoder_layers=2,
                        num_decoder_layers=2, num_heads=4, d_kv=16)
SIZES = ("tiny", "small", "base", "large", "xl", "xxl")
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
FEEDS = ("device", "host", "prefetch")
DONATION_WARNING = "donated buffers were not usable"


# glibc `mallopt` parameters.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _libc():
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt, libc.malloc_trim  # pylint: disable=pointless-statement
    return libc
  except (OSError, AttributeError):
    return None


def keep_freed_memory() -> bool:
  """Stops glibc from returning XLA's per-step host buffers to the kernel.

  XLA's CPU runtime mallocs each step's temporaries and frees them after
  the step. By default glibc serves large blocks with fresh `mmap`s and
  hands freed memory back (`munmap`, and `madvise` when a thread arena's
  top shrinks), so every step pays page faults and page zeroing for all its
  temporaries (about a third of the CPU time of the tiny model in our
  profile). With no mmap and a 1 GiB trim threshold the memory stays with
  the process and is reused. Call it after the first (compiling) step: it
  also trims what compilation left (`malloc_trim`), so the peak RSS stays
  the default allocator's. The steady state equals running with
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824. (Limiting malloc
  to one arena as well made the compilation peak larger and the step no
  faster.) Returns False off glibc.
  """
  libc = _libc()
  if libc is None:
    return False
  ok = all(libc.mallopt(param, value) == 1 for param, value in (
      (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30)))
  libc.malloc_trim(0)
  return ok


def size_config(size: str) -> t5.T5Config:
  """T5 1.1 architecture of a bench size, as the PEFT script defines it."""
  if size not in SIZES:
    raise ValueError(f"Unknown bench size {size!r}; expected one of {SIZES}.")
  return PEFT_TINY if size == "tiny" else t5.get_config(size)


def peak_flops(device_kind: str) -> Optional[float]:
  """Dense bf16 peak FLOP/s of one device of this kind, or None if unknown."""
  for key, value in PEAK_BF16_FLOPS:
    if key.lower() in device_kind.lower():
      return value
  return None


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """One benchmark configuration (see the module docstring and `--help`)."""
  size: str = "base"
  batch: int = 32
  inputs: int = 256
  targets: int = 16
  prompt: int = 100
  steps: int = 30
  warmup: int = 3
  repeats: int = 1
  dtype: str = "bf16"
  remat: str = "none"
  attention: str = "xla"
  mesh_data: int = -1
  mesh_model: int = 1
  fsdp: bool = False
  microbatches: int = 1
  feed: str = "device"
  host_sync: bool = False
  donate: bool = True
  tune_malloc: bool = False
  weight_grads: bool = False
  seed: int = 0

  def __post_init__(self):
    size_config(self.size)
    for name in ("batch", "inputs", "targets", "steps", "warmup", "repeats",
                 "microbatches"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"bench: --{name} must be a positive int, got {value!r}"
                         + (" (the first step compiles)" if name == "warmup" else "")
                         + ".")
    if self.prompt < 0:
      raise ValueError(f"bench: --prompt must be >= 0, got {self.prompt}.")
    for name, choices in (("dtype", tuple(DTYPES)), ("remat", tuple(t5.REMAT_POLICIES)),
                          ("attention", t5.ATTENTION_IMPLS), ("feed", FEEDS)):
      if getattr(self, name) not in choices:
        raise ValueError(f"bench: --{name}={getattr(self, name)!r}; expected one "
                         f"of {choices}.")
    if self.batch % self.microbatches:
      raise ValueError(f"bench: --batch {self.batch} is not divisible by "
                       f"--microbatches {self.microbatches}.")
    if self.weight_grads and self.microbatches > 1:
      raise ValueError("bench: --weight_grads times one whole-batch step; it "
                       "cannot be combined with --microbatches > 1.")

  @property
  def model_config(self) -> t5.T5Config:
    name = DTYPES[self.dtype]
    return dataclasses.replace(size_config(self.size), dtype=name, param_dtype=name,
                               remat_policy=self.remat, attention_impl=self.attention,
                               dropout_rate=0.0)


def synthetic_batch(config: BenchConfig, vocab_size: int) -> dict[str, np.ndarray]:
  """Random token batch: inputs [B, T], targets [B, S], no padding (as PEFT)."""
  rng = np.random.default_rng(config.seed)
  high = min(32000, vocab_size)
  inputs = rng.integers(2, high, (config.batch, config.inputs), dtype=np.int32)
  targets = rng.integers(2, high, (config.batch, config.targets), dtype=np.int32)
  decoder_inputs = np.concatenate(
      [np.zeros((config.batch, 1), np.int32), targets[:, :-1]], axis=1)  # [B, S]
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": targets,
          "decoder_loss_weights": np.ones(targets.shape, np.float32)}


@dataclasses.dataclass
class _Setup:
  mesh: Any
  rules: Any
  step: Any  # jitted (state, frozen, batch) -> (state, metrics)
  raw_step: Any  # the same, unjitted (for the jaxpr)
  state: trainer_lib.TrainState
  frozen: Any
  batch_sharding: Any
  frozen_params: int
  trainable_params: int


def _mesh(config: BenchConfig):
  devices = jax.devices()
  if config.mesh_data != -1:
    needed = config.mesh_data * config.mesh_model
    if needed > len(devices):
      raise ValueError(f"bench: mesh {config.mesh_data} x {config.mesh_model} needs "
                       f"{needed} devices; {len(devices)} are available.")
    devices = devices[:needed]
  return partitioning.make_mesh(config.mesh_data, config.mesh_model, devices=devices)


def build(config: BenchConfig, abstract: bool = False) -> _Setup:
  """Backbone, prompt, optimizer and the jitted step, placed on the mesh.

  `abstract`: the frozen params are `jax.ShapeDtypeStruct`s (no weights are
  made), for `lower`.
  """
  mesh = _mesh(config)
  rules = partitioning.standard_logical_axis_rules(fsdp=config.fsdp)
  if abstract:
    bb = backbones.abstract(config.model_config, mesh, rules)
  else:
    bb = backbones.load(backbones.BackboneSpec(config=config.model_config,
                                               seed=config.seed), mesh, rules)
  method = prompt_tuning.SoftPrompt(spec=bb.spec, length=config.prompt,
                                    initializer=initializers.random_uniform())
  model = seq2seq.Seq2SeqModel(bb.module, method)
  tx = optimizers.build_optimizer(optimizers.OptimizerConfig())  # Adafactor 0.3
  state = trainer_lib.create_train_state(
      model.init_trainables(jax.random.key(config.seed), initializers.InitContext()),
      tx, config.seed)
  replicated = partitioning.replicated(mesh)
  batch_sharding = partitioning.data_sharding(mesh, ndim=1)
  # The `Trainer`'s jit, with donation switchable for the lever measurement.
  if config.weight_grads:
    raw = functools.partial(weight_gradient_step, model=model, tx=tx)
  else:
    raw = functools.partial(trainer_lib.train_step, model=model, tx=tx,
                            num_microbatches=config.microbatches, deterministic=True)
  step = jax.jit(raw, in_shardings=(replicated, bb.shardings, batch_sharding),
                 out_shardings=(replicated, replicated),
                 donate_argnums=(0,) if config.donate else ())
  return _Setup(mesh=mesh, rules=rules, step=step, raw_step=raw,
                state=jax.device_put(state, replicated), frozen=bb.params,
                batch_sharding=batch_sharding,
                frozen_params=optimizers.num_params(bb.params),
                trainable_params=optimizers.num_params(state.params))


def weight_gradient_step(state: trainer_lib.TrainState, frozen, batch, *,
                         model: seq2seq.Seq2SeqModel, tx):
  """`trainer.train_step` that also differentiates every frozen weight.

  The `--weight_grads` counterfactual of the "no weight gradients" lever:
  what a framework that differentiates the whole model pays (about 3 x
  forward instead of 2 x). The frozen gradients' global norm is returned as
  `frozen_grad_norm` so that XLA cannot drop their computation; the prompt
  update is `train_step`'s.
  """
  grad_fn = jax.value_and_grad(model.loss_fn, argnums=(0, 1), has_aux=True)
  (_, aux), (grads, frozen_grads) = grad_fn(
      state.params, frozen, batch, trainer_lib.step_rng(state), True)
  metrics = dict(aux, grad_norm=optax.global_norm(grads),
                 frozen_grad_norm=optax.global_norm(frozen_grads))
  return trainer_lib.apply_gradients(state, grads, tx), metrics


def _batches(config: BenchConfig, setup: _Setup, host_batch, count: int):
  """`count` batches as the step sees them under `config.feed`."""
  if config.feed == "device":
    placed = jax.device_put(host_batch, setup.batch_sharding)
    return itertools.repeat(placed, count)
  if config.feed == "host":
    return itertools.repeat(host_batch, count)
  return pipeline.prefetch_to_device(
      itertools.repeat(host_batch, count), size=2, sharding=setup.batch_sharding)


def _first_step(setup: _Setup, batch):
  """Compiles and runs one step; returns (state, metrics, seconds, report)."""
  old_leaves = jax.tree_util.tree_leaves(setup.state)
  start = time.perf_counter()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    state, metrics = setup.step(setup.state, setup.frozen, batch)
    jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - start
  total = sum(x.nbytes for x in old_leaves)
  report = {
      "donation_warnings": sum(DONATION_WARNING in str(w.message) for w in caught),
      # Bytes of the old state whose buffers the step took over. (Leaves the
      # step returns unchanged, e.g. optax's placeholder [1] factored
      # statistics of an unfactored Adafactor, may stay alive.)
      "state_donated_fraction": round(
          sum(x.nbytes for x in old_leaves if x.is_deleted()) / max(total, 1), 4),
  }
  return state, metrics, seconds, report


def _timed(config: BenchConfig, setup: _Setup, state, batches):
  """Runs `config.steps` steps; returns (state, metrics, seconds per step)."""
  metrics = None
  start = time.perf_counter()
  for batch in itertools.islice(batches, config.steps):
    state, metrics = setup.step(state, setup.frozen, batch)
    if config.host_sync:
      float(metrics["loss"])
  jax.block_until_ready((state, metrics))
  return state, metrics, (time.perf_counter() - start) / config.steps


def _memory_fields() -> dict:
  peaks = []
  for device in jax.local_devices():
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
  return {"peak_mem_gib": round(max(peaks) / 2**30, 2) if peaks else None,
          "peak_rss_gib": round(rss_bytes / 2**30, 3)}


def _model_flops(config: BenchConfig) -> int:
  """Forward + input-gradient backward FLOPs of one step (`flops`)."""
  return flops.train_step_flops(config.model_config, config.batch, config.inputs,
                                config.targets, config.prompt)


def _flops_fields(config: BenchConfig, setup: _Setup, traced: int, step_s: float):
  model_flops = _model_flops(config)
  device = jax.devices()[0]
  peak = peak_flops(device.device_kind)
  num_devices = setup.mesh.devices.size
  achieved = model_flops / step_s
  return {"model_flops_per_step": model_flops,
          "traced_dot_flops_per_step": traced,
          "model_tflops_per_s": round(achieved / 1e12, 4),
          "peak_tflops_per_device": None if peak is None else peak / 1e12,
          "mfu": None if peak is None else round(achieved / (peak * num_devices), 4)}


def run_benchmark(config: BenchConfig) -> dict:
  """Builds, warms up and times one configuration; returns its JSON record."""
  setup = build(config)
  host_batch = synthetic_batch(config, config.model_config.vocab_size)
  total = config.warmup + config.steps * config.repeats
  with partitioning.activate(setup.mesh, setup.rules):
    # Traced before the first step donates (deletes) the initial state.
    traced = flops.traced_dot_flops(setup.raw_step, setup.state, setup.frozen,
                                    host_batch)
    batches = _batches(config, setup, host_batch, total)
    state, metrics, first_s, donation = _first_step(setup, next(batches))
    if config.tune_malloc:
      keep_freed_memory()
    for batch in itertools.islice(batches, config.warmup - 1):
      state, metrics = setup.step(state, setup.frozen, batch)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(config.repeats):
      state, metrics, seconds = _timed(config, setup, state, batches)
      times.append(seconds)
    flops_fields = _flops_fields(config, setup, traced, float(np.median(times)))
  return _record(config, setup, times, first_s, donation, metrics, flops_fields)


def lower(config: BenchConfig) -> dict:
  """Traces and lowers the step without making weights or running it.

  A check of a configuration (shapes, shardings, remat policy, attention
  selection on this backend) that fits any machine, e.g. xxl before device
  time is spent. Reports exact counts only: parameters, the frozen weights'
  bytes in their dtype, model and traced matmul FLOPs, the StableHLO size.
  No time or memory figure: nothing runs.
  """
  start = time.perf_counter()
  setup = build(config, abstract=True)
  host_batch = synthetic_batch(config, config.model_config.vocab_size)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=setup.batch_sharding)
           for k, v in host_batch.items()}
  with partitioning.activate(setup.mesh, setup.rules):
    traced = flops.traced_dot_flops(setup.raw_step, setup.state, setup.frozen, batch)
    text = setup.step.lower(setup.state, setup.frozen, batch).as_text()
  frozen_bytes = sum(x.size * x.dtype.itemsize
                     for x in jax.tree_util.tree_leaves(setup.frozen))
  return {
      **_header(config), "lowered": True,
      "frozen_params": setup.frozen_params,
      "trainable_params": setup.trainable_params,
      "frozen_weights_gib": round(frozen_bytes / 2**30, 3),
      "model_flops_per_step": _model_flops(config),
      "traced_dot_flops_per_step": traced, "stablehlo_bytes": len(text),
      "platform": jax.devices()[0].platform, "mesh": dict(setup.mesh.shape),
      "remat": config.remat, "attention": config.attention, "fsdp": config.fsdp,
      "microbatches": config.microbatches, "weight_grads": config.weight_grads,
      "lower_s": round(time.perf_counter() - start, 2), "jax": jax.__version__}


def _record(config, setup, times, first_s, donation, metrics, flops_fields) -> dict:
  step_s = float(np.median(times))
  device = jax.devices()[0]
  tokens = config.batch * (config.inputs + config.prompt + config.targets)
  record = {
      **_header(config), "frozen_params": setup.frozen_params,
      "trainable_params": setup.trainable_params,
      "step_s": round(step_s, 5), "examples_per_s": round(config.batch / step_s, 1),
      "tokens_per_s": round(tokens / step_s, 1),
      "step_s_min": round(min(times), 5), "step_s_max": round(max(times), 5),
      "first_step_s": round(first_s, 2),
      "device": device.device_kind, "platform": device.platform,
      "num_devices": int(setup.mesh.devices.size),
      "mesh": dict(setup.mesh.shape), "jax": jax.__version__,
      "loss": float(metrics["loss"]),
  }
  record.update(_memory_fields())
  record.update(flops_fields)
  record.update(donation)
  record.update({k: getattr(config, k) for k in (
      "remat", "attention", "fsdp", "microbatches", "feed", "host_sync", "donate",
      "tune_malloc", "weight_grads", "steps", "warmup", "repeats")})
  record["date"] = datetime.date.today().isoformat()
  return record


def _error_record(config: BenchConfig, error: Exception) -> dict:
  message = str(error).splitlines()[0] if str(error) else type(error).__name__
  oom = "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()
  return {**_header(config),
          "error": "out of memory" if oom else f"{type(error).__name__}: {message}"}


def _header(config: BenchConfig) -> dict:
  """The fields every record starts with (the PEFT script's shape fields)."""
  return {"system": "ptuning_jax", "size": config.size, "dtype": config.dtype,
          "batch": config.batch, "inputs": config.inputs, "targets": config.targets,
          "prompt": config.prompt}


# ------------------------------------ CLI ------------------------------------


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="ptuning-jax bench",
                              description="Prompt-tuning step throughput (JSON lines).")
  d = BenchConfig()
  p.add_argument("--size", default=d.size, choices=SIZES)
  p.add_argument("--sizes", default="",
                 help="comma-separated sizes, one subprocess each (overrides --size).")
  for name in ("batch", "inputs", "targets", "prompt", "steps", "warmup", "repeats",
               "mesh_data", "mesh_model", "microbatches", "seed"):
    p.add_argument(f"--{name}", type=int, default=getattr(d, name))
  p.add_argument("--dtype", default=d.dtype, choices=tuple(DTYPES),
                 help="bf16: bfloat16 frozen weights and compute (prompt and "
                      "optimizer state stay float32); fp32: float32 throughout.")
  p.add_argument("--remat", default=d.remat, choices=tuple(t5.REMAT_POLICIES))
  p.add_argument("--attention", default=d.attention, choices=t5.ATTENTION_IMPLS)
  p.add_argument("--feed", default=d.feed, choices=FEEDS)
  p.add_argument("--fsdp", action="store_true")
  p.add_argument("--host_sync", action="store_true",
                 help="read the loss on the host after every step (lever check).")
  p.add_argument("--no_donate", dest="donate", action="store_false",
                 help="do not donate the train state to the step (lever check).")
  p.add_argument("--default_malloc", dest="tune_malloc", action="store_false",
                 help="leave glibc's allocator settings alone (see "
                      "keep_freed_memory; lever check).")
  p.add_argument("--weight_grads", action="store_true",
                 help="also differentiate every frozen weight, as a framework "
                      "that differentiates the whole model does (lever check).")
  p.add_argument("--lower_only", action="store_true",
                 help="trace and lower the step with abstract weights; nothing is "
                      "allocated or run (a configuration check for any machine).")
  p.add_argument("--in_process", action="store_true",
                 help="run several --sizes in this process (memory peaks accumulate).")
  return p


def configs_from_args(args: argparse.Namespace) -> list[BenchConfig]:
  fields = {f.name for f in dataclasses.fields(BenchConfig)}
  base = {k: v for k, v in vars(args).items() if k in fields}
  sizes = [s.strip() for s in args.sizes.split(",") if s.strip()] or [args.size]
  return [BenchConfig(**dict(base, size=s)) for s in sizes]


def _child_argv(argv: Sequence[str], size: str) -> list[str]:
  out, skip = [], False
  for arg in argv:
    if skip:
      skip = False
      continue
    if arg in ("--sizes", "--size"):
      skip = True
      continue
    if arg.startswith(("--sizes=", "--size=")):
      continue
    out.append(arg)
  return out + ["--size", size]


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
  """Runs the configurations; prints (and returns) one JSON record each."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parser().parse_args(argv)
  configs = configs_from_args(args)
  if args.tune_malloc and _libc() is None:
    configs = [dataclasses.replace(c, tune_malloc=False) for c in configs]
  records = []
  for config in configs:
    if len(configs) > 1 and not args.in_process:
      cmd = [sys.executable, "-m", "ptuning_jax.projects.bench.bench"] + _child_argv(argv, config.size)
      proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
      lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
      record = (json.loads(lines[-1]) if lines else _error_record(
          config, RuntimeError(f"subprocess exited with {proc.returncode}")))
    else:
      try:
        record = lower(config) if args.lower_only else run_benchmark(config)
      except (jax.errors.JaxRuntimeError, ValueError) as e:
        # Out of memory, or a setting this machine cannot run (e.g. cuDNN
        # attention without a GPU): reported as the configuration's record.
        record = _error_record(config, e)
    print(json.dumps(record), flush=True)
    records.append(record)
  if any("error" in r for r in records):
    raise SystemExit(1)
  return records


if __name__ == "__main__":
  main()
