"""Entry points: `train`, `evaluate` and `infer`, configured by gin.

These functions are plain Python; the CLI (`ptuning_jax.cli`) registers them
with gin (`gin.external_configurable`), so gin files bind
`run.train.num_steps = 1000` etc. under `from __gin__ import
dynamic_registration`.

A run:
  1. builds the `(data, model)` mesh and the logical axis rules;
  2. loads the frozen backbone straight into its shardings;
  3. builds the method (`method(backbone_config=...)`) and its trainables;
  4. builds the input pipeline (seqio task -> arrays -> resumable batches);
  5. restores the latest checkpoint of the trainables if there is one;
  6. loops: jitted `train_step`, periodic eval, checkpoints and metrics.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np
import tqdm

from ptuning_jax import backbones
from ptuning_jax.training import checkpoints
from ptuning_jax.training import evaluation
from ptuning_jax.training import files
from ptuning_jax import gin_utils
from ptuning_jax.models import seq2seq
from ptuning_jax.training import optimizers
from ptuning_jax.training import partitioning
from ptuning_jax.methods import initializers
from ptuning_jax.training import summaries
from ptuning_jax.training import trainer as trainer_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """`(data, model)` mesh; data=-1 uses all remaining devices; fsdp also shards
  the frozen weights' `embed` axis over `data`."""
  data: int = -1
  model: int = 1
  fsdp: bool = False


@dataclasses.dataclass
class Run:
  """Everything a train/eval/infer run has built (also handy in notebooks)."""
  mesh: Any
  rules: Any
  backbone: backbones.Backbone
  model: seq2seq.PromptModel
  trainer: trainer_lib.Trainer
  state: trainer_lib.TrainState
  data: Any


def build_run(*, backbone: backbones.BackboneSpec, method: Callable[..., Any],
              data: Any, optimizer: optimizers.OptimizerConfig,
              mesh: MeshConfig = MeshConfig(), seed: int = 42,
              num_microbatches: int = 1, z_loss: float = 0.0,
              deterministic: bool = False,
              model_factory: Callable[..., seq2seq.PromptModel] = seq2seq.PromptModel
              ) -> Run:
  """Mesh, backbone, method, optimizer and jitted steps; a fresh train state.

  `model_factory(backbone_module, method, z_loss=...)` builds the model
  (default `seq2seq.PromptModel`; e.g. MPT's distillation model overrides its
  loss).
  """
  mesh_ = partitioning.make_mesh(mesh.data, mesh.model)
  rules = partitioning.standard_logical_axis_rules(fsdp=mesh.fsdp)
  bb = backbones.load(backbone, mesh_, rules)
  method_ = method(backbone_config=bb.config)
  _check_task_count(method_, data)
  model = model_factory(bb.module, method_, z_loss=z_loss)
  context = initializers.InitContext(embedding=np.asarray(bb.embedding, np.float32),
                                vocab=data.vocab)
  trainables = model.init_trainables(jax.random.key(seed), context)
  tx = optimizers.build_optimizer(optimizer)
  lr_fn = optimizers.build_schedules(optimizer)[optimizers.DEFAULT_GROUP]
  state = trainer_lib.create_train_state(trainables, tx, seed)
  trainer = trainer_lib.Trainer(model, tx, mesh_, rules, bb.shardings,
                                num_microbatches=num_microbatches, lr_fn=lr_fn,
                                deterministic=deterministic)
  return Run(mesh=mesh_, rules=rules, backbone=bb, model=model, trainer=trainer,
             state=trainer.place_state(state), data=data)


def _check_task_count(method: Any, data: Any) -> None:
  """A multi-task method's K must match the data's `task_index` numbering."""
  names = getattr(data, "task_index_names", None)
  num_tasks = getattr(method, "num_tasks", None)
  if names is not None and num_tasks is not None and len(names) != num_tasks:
    raise ValueError(
        f"{type(method).__name__}.num_tasks={num_tasks} but the data numbers "
        f"{len(names)} tasks (SeqioData.task_index={list(names)}).")


def parameter_report(run: Run) -> dict:
  """Trainable parameter count and fraction of the whole model."""
  trainable = optimizers.num_params(run.state.params)
  frozen = optimizers.num_params(run.backbone.params)
  return {"trainable_params": trainable, "frozen_params": frozen,
          "trainable_fraction": trainable / (trainable + frozen)}


def train(*, model_dir: str, backbone: backbones.BackboneSpec,
          method: Callable[..., Any], data: Any,
          optimizer: optimizers.OptimizerConfig = optimizers.OptimizerConfig(),
          num_steps: int = 1000, eval_every: int = 0,
          eval_config: evaluation.EvalConfig = evaluation.EvalConfig(),
          checkpoint_every: int = 0, keep_checkpoints: int = 3,
          log_every: int = 10, mesh: MeshConfig = MeshConfig(), seed: int = 42,
          num_microbatches: int = 1, z_loss: float = 0.0,
          progress_bar: bool = True,
          model_factory: Callable[..., seq2seq.PromptModel] = seq2seq.PromptModel
          ) -> dict:
  """Prompt-tunes `method` on `data` over a frozen `backbone`; returns final
  metrics. `model_factory`: see `build_run`."""
  os.makedirs(model_dir, exist_ok=True)
  gin_utils.write_config(model_dir, "config.gin")
  run = build_run(backbone=backbone, method=method, data=data, optimizer=optimizer,
                  mesh=mesh, seed=seed, num_microbatches=num_microbatches,
                  z_loss=z_loss, model_factory=model_factory)
  writer = summaries.MetricWriter(model_dir)
  report = parameter_report(run)
  log.info("trainable params %d (%.6f%% of %d)", report["trainable_params"],
           100 * report["trainable_fraction"],
           report["trainable_params"] + report["frozen_params"])
  writer.write_hparams(report)
  ckpt = checkpoints.Checkpointer(
      os.path.join(model_dir, "checkpoints"), keep=keep_checkpoints,
      keep_best=eval_config.best_metric if eval_every else None,
      best_mode=eval_config.best_mode)
  train_iter = data.train_iterator()
  state = _maybe_restore(run, ckpt, train_iter)
  final = _train_loop(run, state, train_iter, writer, ckpt, num_steps=num_steps,
                      eval_every=eval_every, eval_config=eval_config,
                      checkpoint_every=checkpoint_every, log_every=log_every,
                      progress_bar=progress_bar)
  writer.close()
  ckpt.close()
  gin_utils.write_config(model_dir, "operative_config.gin", operative=True)
  return dict(final, **report)


def _maybe_restore(run: Run, ckpt: checkpoints.Checkpointer, train_iter):
  step = ckpt.latest_step()
  if step is None:
    return run.state
  state, data_state = ckpt.restore(step, run.state)
  train_iter.set_state(data_state)
  log.info("restored step %d from %s", step, ckpt.directory)
  return state


def _train_loop(run: Run, state, train_iter, writer, ckpt, *, num_steps,
                eval_every, eval_config, checkpoint_every, log_every,
                progress_bar) -> dict:
  trainer, frozen = run.trainer, run.backbone.params
  start = int(jax.device_get(state.step))
  bar = tqdm.tqdm(range(start, num_steps), initial=start, total=num_steps,
                  disable=not progress_bar or jax.process_index() != 0,
                  desc="train", dynamic_ncols=True)
  pending, tick, examples, final = [], time.perf_counter(), 0, {}
  for step in bar:
    batch = next(train_iter)
    examples += len(batch["encoder_input_tokens"])
    state, metrics = trainer.train_step(state, frozen, trainer.place_batch(batch))
    pending.append(metrics)
    done = step + 1
    if done % log_every == 0 or done == num_steps:
      means = _mean_metrics(jax.device_get(pending))
      now = time.perf_counter()
      means["examples_per_s"] = examples / max(now - tick, 1e-9)
      pending, tick, examples = [], now, 0
      writer.write(done, means, prefix="train")
      bar.set_postfix(loss=f"{means['loss']:.4f}",
                      ex_s=f"{means['examples_per_s']:.1f}", refresh=False)
      final.update({f"train/{k}": v for k, v in means.items()})
    eval_metrics = None
    if eval_every and (done % eval_every == 0 or done == num_steps):
      eval_metrics = evaluation.evaluate(run, state.params, eval_config)
      writer.write(done, eval_metrics, prefix="eval")
      final.update({f"eval/{k}": v for k, v in eval_metrics.items()})
    if (checkpoint_every and done % checkpoint_every == 0) or done == num_steps:
      ckpt.save(done, state, train_iter.get_state(), metrics=eval_metrics)
  return final


def _mean_metrics(history: Sequence[Mapping[str, Any]]) -> dict:
  keys = history[0].keys()
  return {k: float(np.mean([np.asarray(h[k]) for h in history])) for k in keys}


def _restore_for_eval(run: Run, model_dir: Optional[str], step: Optional[int]):
  """The trainables of `step` (default latest) in `model_dir`, or the initial
  ones (e.g. a prompt initialised from a `.npy` file) when there is none."""
  if not model_dir or not os.path.isdir(os.path.join(model_dir, "checkpoints")):
    if step is not None:
      raise FileNotFoundError(f"checkpoint step {step} requested but {model_dir} "
                              "has no checkpoints/ directory.")
    return run.state
  ckpt = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"))
  step = ckpt.latest_step() if step is None else step
  if step is None:
    return run.state
  state, _ = ckpt.restore(step, run.state)
  ckpt.close()
  return state


def evaluate(*, backbone: backbones.BackboneSpec, method: Callable[..., Any],
             data: Any, model_dir: Optional[str] = None,
             checkpoint_step: Optional[int] = None,
             eval_config: evaluation.EvalConfig = evaluation.EvalConfig(),
             mesh: MeshConfig = MeshConfig(), seed: int = 42,
             output_file: Optional[str] = None) -> dict:
  """Evaluates a checkpoint (or the method's initial values, e.g. a `.npy`
  prompt) on `eval_config.split`; returns and optionally writes the metrics."""
  run = build_run(backbone=backbone, method=method, data=data,
                  optimizer=optimizers.OptimizerConfig(), mesh=mesh, seed=seed)
  state = _restore_for_eval(run, model_dir, checkpoint_step)
  metrics = evaluation.evaluate(run, state.params, eval_config)
  metrics["step"] = int(jax.device_get(state.step))
  if output_file:
    files.write_json(output_file, metrics)
  return metrics


def infer(*, backbone: backbones.BackboneSpec, method: Callable[..., Any],
          data: Any, input_file: str, output_file: str,
          model_dir: Optional[str] = None, checkpoint_step: Optional[int] = None,
          batch_size: int = 32, max_decode_length: Optional[int] = None,
          mesh: MeshConfig = MeshConfig(), seed: int = 42) -> int:
  """Greedy predictions for every input of `input_file` (one input text per
  line, or JSONL with an "inputs" field) written as JSONL; returns the count."""
  run = build_run(backbone=backbone, method=method, data=data,
                  optimizer=optimizers.OptimizerConfig(), mesh=mesh, seed=seed)
  state = _restore_for_eval(run, model_dir, checkpoint_step)
  texts = files.read_inputs(input_file)
  dataset = data.encode_inputs(texts)
  length = max_decode_length or data.feature_lengths["targets"]
  preds = evaluation.predict(run, state.params, dataset, batch_size, length)
  files.write_jsonl(output_file, [
      {"inputs": t, "prediction": data.vocab.decode(p.tolist())}
      for t, p in zip(texts, preds)])
  return len(texts)
