"""Entry points: `train`, `evaluate` and `infer`, configured by gin.

These functions are plain Python; the CLI (`ptuning_jax.cli`) registers them
with gin (`gin.external_configurable`), so gin files bind
`run.train.num_steps = 1000` etc. under `from __gin__ import
dynamic_registration`.

A run, for any registered backbone family and any registered method:
  1. builds the `(data, model)` mesh and the logical axis rules;
  2. loads the frozen backbone straight into its shardings (its family from
     the checkpoint's `config.json`);
  3. builds the method (`method(spec=backbone.spec)`) and the task model that
     scores it on the data (`models.build`: text-to-text on a seq2seq
     backbone, classification with a head on an encoder) and its trainables;
  4. takes the data object's resumable batch iterator;
  5. restores the latest checkpoint of the trainables if there is one;
  6. loops: jitted `train_step`, periodic eval, checkpoints and metrics;
  7. under full fine-tuning, exports the trained backbone in the Hugging Face
     layout to `<model_dir>/backbone`.
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
from ptuning_jax import models
from ptuning_jax.models import task_model
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
  model: task_model.TaskModel
  trainer: trainer_lib.Trainer
  state: trainer_lib.TrainState
  data: Any

  @property
  def frozen(self) -> Any:
    """The frozen parameters every step gets ({} under full fine-tuning)."""
    return self.model.frozen_params(self.backbone.params)


def build_run(*, backbone: backbones.BackboneSpec, method: Callable[..., Any],
              data: Any, optimizer: optimizers.OptimizerConfig,
              mesh: MeshConfig = MeshConfig(), seed: int = 42,
              num_microbatches: int = 1, deterministic: bool = False,
              model: Callable[..., task_model.TaskModel] = models.build) -> Run:
  """Mesh, backbone, method, task model, optimizer and jitted steps; a fresh
  train state.

  `model(backbone, method, data)` builds the task model (default
  `models.build`; gin binds its options, e.g. the classifier head or MPT's
  distillation loss term).
  """
  mesh_ = partitioning.make_mesh(mesh.data, mesh.model)
  _check_batch_fits(data, mesh_)
  rules = partitioning.standard_logical_axis_rules(fsdp=mesh.fsdp)
  bb = backbones.load(backbone, mesh_, rules)
  method_ = method(spec=bb.spec)
  _check_task_count(method_, data)
  model_ = model(bb, method_, data)
  context = initializers.InitContext(embedding=np.asarray(bb.embedding, np.float32),
                                     vocab=getattr(data, "vocab", None))
  trainables = model_.init_trainables(jax.random.key(seed), context, bb.params)
  tx = optimizers.build_optimizer(optimizer)
  lr_fn = optimizers.build_schedules(optimizer)[optimizers.DEFAULT_GROUP]
  state = trainer_lib.create_train_state(trainables, tx, seed)
  trainer = trainer_lib.Trainer(model_, tx, mesh_, rules,
                                model_.frozen_params(bb.shardings),
                                num_microbatches=num_microbatches, lr_fn=lr_fn,
                                deterministic=deterministic)
  return Run(mesh=mesh_, rules=rules, backbone=bb, model=model_, trainer=trainer,
             state=trainer.place_state(state), data=data)


def _check_batch_fits(data: Any, mesh: Any) -> None:
  """The global batch must split evenly over the mesh's data axis."""
  size = mesh.shape["data"]
  batch = getattr(data, "batch_size", None)
  if batch is not None and batch % size:
    raise ValueError(f"The batch size {batch} ({type(data).__name__}.batch_size) does "
                     f"not split over the mesh's data axis of {size} devices; use a "
                     f"multiple of {size} or set MeshConfig.data.")


def _check_task_count(method: Any, data: Any) -> None:
  """A multi-task method's K must match the data's `task_index` numbering."""
  names = getattr(data, "task_index_names", None)
  num_tasks = getattr(method, "num_tasks", None)
  if names is not None and num_tasks is not None and len(names) != num_tasks:
    raise ValueError(
        f"{type(method).__name__}.num_tasks={num_tasks} but the data numbers "
        f"{len(names)} tasks (SeqioData.task_index={list(names)}).")


def parameter_report(run: Run) -> dict:
  """Trainable parameter count and fraction of the whole model, and the
  trainable count of each part (`method_params`, `head_params`,
  `backbone_params`: see `task_model`)."""
  trainable = optimizers.num_params(run.state.params)
  frozen = optimizers.num_params(run.frozen)
  parts = {f"{part}_params": 0 for part in (task_model.METHOD, task_model.HEAD,
                                             task_model.BACKBONE)}
  parts.update({f"{part}_params": optimizers.num_params(tree)
                for part, tree in run.state.params.items()})
  return {"trainable_params": trainable, "frozen_params": frozen,
          "trainable_fraction": trainable / (trainable + frozen), **parts}


def train(*, model_dir: str, backbone: backbones.BackboneSpec,
          method: Callable[..., Any], data: Any,
          optimizer: optimizers.OptimizerConfig = optimizers.OptimizerConfig(),
          num_steps: int = 1000, eval_every: int = 0,
          eval_config: evaluation.EvalConfig = evaluation.EvalConfig(),
          checkpoint_every: int = 0, keep_checkpoints: int = 3,
          log_every: int = 10, mesh: MeshConfig = MeshConfig(), seed: int = 42,
          num_microbatches: int = 1, progress_bar: bool = True,
          model: Callable[..., task_model.TaskModel] = models.build) -> dict:
  """Trains `method` on `data` over a frozen `backbone`; returns final
  metrics. `model`: see `build_run`."""
  run = build_run(backbone=backbone, method=method, data=data, optimizer=optimizer,
                  mesh=mesh, seed=seed, num_microbatches=num_microbatches, model=model)
  train_iter = data.train_iterator()
  # Only a run whose inputs were checked leaves a config.gin (or a MODEL_DIR).
  os.makedirs(model_dir, exist_ok=True)
  gin_utils.write_config(model_dir, "config.gin")
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
  state = _maybe_restore(run, ckpt, train_iter)
  final = _train_loop(run, state, train_iter, writer, ckpt, num_steps=num_steps,
                      eval_every=eval_every, eval_config=eval_config,
                      checkpoint_every=checkpoint_every, log_every=log_every,
                      progress_bar=progress_bar)
  writer.close()
  ckpt.close()
  if run.model.train_backbone:
    final["backbone_dir"] = export_backbone(run, final.pop("_state"),
                                            os.path.join(model_dir, BACKBONE_DIR))
  final.pop("_state", None)
  gin_utils.write_config(model_dir, "operative_config.gin", operative=True)
  return dict(final, **report)


BACKBONE_DIR = "backbone"


def export_backbone(run: Run, state: trainer_lib.TrainState, out_dir: str) -> str:
  """Writes a fully fine-tuned backbone in its family's Hugging Face layout."""
  family = run.backbone.family
  if family.save is None:
    raise ValueError(f"The {family.name} family has no checkpoint export; the "
                     "fine-tuned backbone stays in the orbax checkpoints only.")
  params = jax.device_get(state.params[task_model.BACKBONE])
  if jax.process_index() == 0:
    family.save(params, run.backbone.config, out_dir)
  return out_dir


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
  trainer, frozen = run.trainer, run.frozen
  start = int(jax.device_get(state.step))
  bar = tqdm.tqdm(range(start, num_steps), initial=start, total=num_steps,
                  disable=not progress_bar or jax.process_index() != 0,
                  desc="train", dynamic_ncols=True)
  pending, tick, examples, final = [], time.perf_counter(), 0, {}
  for step in bar:
    batch = next(train_iter)
    examples += len(next(iter(batch.values())))
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
  final["_state"] = state
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
             output_file: Optional[str] = None,
             model: Callable[..., task_model.TaskModel] = models.build) -> dict:
  """Evaluates a checkpoint (or the method's initial values, e.g. a `.npy`
  prompt) on `eval_config.split`; returns and optionally writes the metrics."""
  run = build_run(backbone=backbone, method=method, data=data,
                  optimizer=optimizers.OptimizerConfig(), mesh=mesh, seed=seed,
                  model=model)
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
          mesh: MeshConfig = MeshConfig(), seed: int = 42,
          model: Callable[..., task_model.TaskModel] = models.build) -> dict:
  """Predictions for every input of `input_file` written as JSONL; returns
  `{"output_file": output_file, "predictions": count}` (what the CLI prints).
  Text data: one input text per line (or JSONL with an "inputs" field),
  greedy decodes. Classification data: JSONL rows in the task's raw format
  (its fields), the predicted label (or score) per row."""
  run = build_run(backbone=backbone, method=method, data=data,
                  optimizer=optimizers.OptimizerConfig(), mesh=mesh, seed=seed,
                  model=model)
  state = _restore_for_eval(run, model_dir, checkpoint_step)
  if getattr(data, "task_kind", models.TEXT) == models.TEXT:
    inputs = files.read_inputs(input_file)
    dataset = data.encode_inputs(inputs)
    length = max_decode_length or data.feature_lengths["targets"]
    preds = evaluation.predict(run, state.params, dataset, batch_size, length)
    rows = [{"inputs": t, "prediction": data.vocab.decode(p.tolist())}
            for t, p in zip(inputs, preds)]
  else:
    inputs = data.read_inputs(input_file)
    dataset = data.encode_inputs(inputs, input_file)
    outputs = evaluation.classifier_outputs(run, state.params, dataset, batch_size)
    rows = [dict(row, prediction=data.describe_output(o))
            for row, o in zip(inputs, outputs)]
  files.write_jsonl(output_file, rows)
  return {"output_file": output_file, "predictions": len(rows)}
