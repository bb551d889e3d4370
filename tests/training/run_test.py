"""Run-level invariants: resume equals uninterrupted, backbone equals its
checkpoint, exported .npy prompts reproduce the training-time metric, and a
checkpoint missing a backbone tensor is a clear error."""
import functools
import glob
import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy

from ptuning_jax import backbones
from ptuning_jax.training import evaluation
from ptuning_jax.backbones.hf import t5 as hf_t5
from ptuning_jax.training import optimizers
from ptuning_jax.training import partitioning
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.data import synthetic
from ptuning_jax.data import text_data
from ptuning_jax import testing
from ptuning_jax.training import run as run_lib
from ptuning_jax.data import vocab as vocab_lib

P = 4
FEATURES = {"inputs": 24, "targets": 4}


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
  config = testing.tiny_config(vocab_size=vocab_lib.ByteVocab().vocab_size)
  path = str(tmp_path_factory.mktemp("backbone"))
  hf_t5.save_checkpoint(testing.init_params(config, seed=3), config, path)
  return path


def _data(seed=0):
  task = synthetic.HELDOUT_TASK
  splits = {"train": synthetic.train_examples(task, 64, seed),
            "validation": synthetic.eval_examples(task, 24, seed)}
  return text_data.TextTaskData(splits, vocab_lib.ByteVocab(), FEATURES,
                                batch_size=8, seed=seed,
                                label_strings=synthetic.label_strings(task))


def _common(backbone_dir):
  return dict(backbone=backbones.BackboneSpec(checkpoint_dir=backbone_dir),
              method=functools.partial(prompt_tuning.SoftPrompt, length=P,
                                       initializer=initializers.sampled_vocab(200)),
              data=_data(), mesh=run_lib.MeshConfig(data=2, model=4))


EVAL = evaluation.EvalConfig(mode="rank", batch_size=8)


def _train(model_dir, backbone_dir, steps, checkpoint_every):
  return run_lib.train(model_dir=model_dir, num_steps=steps,
                         checkpoint_every=checkpoint_every, eval_every=steps,
                         eval_config=EVAL, log_every=2, progress_bar=False,
                         optimizer=optimizers.OptimizerConfig(),
                         **_common(backbone_dir))


def _final_prompt(model_dir):
  step = max(int(s) for s in os.listdir(os.path.join(model_dir, "checkpoints", "numpy")))
  files = glob.glob(os.path.join(model_dir, "checkpoints", "numpy", str(step), "*prompt*.npy"))
  assert len(files) == 1, files
  return files[0], np.load(files[0])


def test_resumed_run_equals_uninterrupted(tmp_path, backbone_dir):
  _train(str(tmp_path / "full"), backbone_dir, 6, 3)
  _train(str(tmp_path / "split"), backbone_dir, 3, 3)  # "killed" after step 3
  _train(str(tmp_path / "split"), backbone_dir, 6, 3)  # resumed
  _, full = _final_prompt(str(tmp_path / "full"))
  _, split = _final_prompt(str(tmp_path / "split"))
  np.testing.assert_array_equal(split, full)


def test_npy_prompt_eval_reproduces_training_metric(tmp_path, backbone_dir):
  final = _train(str(tmp_path / "run"), backbone_dir, 4, 4)
  path, value = _final_prompt(str(tmp_path / "run"))
  assert value.shape[0] == P
  common = _common(backbone_dir)
  common["method"] = functools.partial(prompt_tuning.SoftPrompt, length=P,
                                       initializer=initializers.from_file(path))
  metrics = run_lib.evaluate(eval_config=EVAL, **common)
  assert metrics["accuracy"] == final["eval/accuracy"]
  np.testing.assert_allclose(metrics["loss"], final["eval/loss"], rtol=1e-6)
  # The metrics log has the same number.
  rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  evals = [r for r in rows if r.get("prefix") == "eval"]
  assert evals and evals[-1]["metrics"]["accuracy"] == final["eval/accuracy"]


def test_backbone_equals_checkpoint_after_training(backbone_dir):
  mesh = partitioning.make_mesh(2, 4)
  run = run_lib.build_run(optimizer=optimizers.OptimizerConfig(),
                            **dict(_common(backbone_dir), mesh=run_lib.MeshConfig(2, 4)))
  it = run.data.train_iterator()
  state = run.state
  for _ in range(2):
    state, _ = run.trainer.train_step(state, run.backbone.params,
                                      run.trainer.place_batch(next(it)))
  reference = hf_t5.load_params(backbone_dir)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
      jax.device_get(run.backbone.params), reference)
  del mesh


def test_checkpoint_missing_backbone_tensor_is_an_error(tmp_path, backbone_dir):
  broken = tmp_path / "broken"
  broken.mkdir()
  tensors = safetensors.numpy.load_file(os.path.join(backbone_dir, "model.safetensors"))
  victim = sorted(k for k in tensors if "layer.1" in k)[0]
  del tensors[victim]
  safetensors.numpy.save_file(tensors, str(broken / "model.safetensors"))
  (broken / "config.json").write_text(open(os.path.join(backbone_dir, "config.json")).read())
  with pytest.raises(ValueError, match=victim.replace(".", r"\.")):
    backbones.load(backbones.BackboneSpec(checkpoint_dir=str(broken)),
                   partitioning.make_mesh(1, 1, devices=jax.devices()[:1]),
                   partitioning.standard_logical_axis_rules())


# ------------------------------------------------------ an encoder backbone


def _bert_train(model_dir, glue_world, steps, checkpoint_every, method):
  from ptuning_jax.data import classification  # pylint: disable=g-import-not-at-top
  data = classification.ClassificationData(
      "rte", glue_world["data"], glue_world["backbone"], max_length=24, batch_size=8,
      seed=1)
  return run_lib.train(
      model_dir=model_dir, backbone=backbones.BackboneSpec(
          checkpoint_dir=glue_world["backbone"], dropout_rate=0.1),
      method=method, data=data, num_steps=steps, checkpoint_every=checkpoint_every,
      eval_every=steps, eval_config=evaluation.EvalConfig(batch_size=8), log_every=1,
      progress_bar=False, mesh=run_lib.MeshConfig(data=2, model=4),
      optimizer=optimizers.OptimizerConfig(name="adamw", learning_rate=1e-2))


@pytest.mark.parametrize("method", ["prompt_tuning", "full_finetune"])
def test_bert_classification_run_resumes_bit_identically(tmp_path, glue_world, method):
  """A BERT-family classification run through `run.train` (sharded step,
  dropout on, orbax checkpoints), killed after step 3 and resumed, ends
  bit-identical to an uninterrupted one: the method, the head and, under full
  fine-tuning, the exported backbone."""
  from ptuning_jax import methods  # pylint: disable=g-import-not-at-top
  factory = methods.get(method).cls
  if method == "prompt_tuning":
    factory = functools.partial(factory, length=P, initializer=initializers.normal(0.5))
  full = _bert_train(str(tmp_path / "full"), glue_world, 6, 3, factory)
  _bert_train(str(tmp_path / "split"), glue_world, 3, 3, factory)  # "killed"
  split = _bert_train(str(tmp_path / "split"), glue_world, 6, 3, factory)  # resumed
  assert np.isfinite(full["eval/score"]) and split["eval/score"] == full["eval/score"]
  exported = os.path.join("checkpoints", "numpy", "6")
  names = sorted(os.listdir(tmp_path / "full" / exported))
  assert "head.dense.kernel.npy" in names
  assert ("prompt.npy" in names) == (method == "prompt_tuning")
  for name in names:
    np.testing.assert_array_equal(np.load(tmp_path / "split" / exported / name),
                                  np.load(tmp_path / "full" / exported / name))
  if method == "full_finetune":
    for run_dir in ("full", "split"):
      assert (tmp_path / run_dir / "backbone" / "model.safetensors").exists()
    a = safetensors.numpy.load_file(str(tmp_path / "full/backbone/model.safetensors"))
    b = safetensors.numpy.load_file(str(tmp_path / "split/backbone/model.safetensors"))
    assert sorted(a) == sorted(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
