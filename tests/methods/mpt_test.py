"""MPT: counts, the decomposition, PEFT's init modes, distillation, drivers."""
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax import backbones
from ptuning_jax.backbones.hf import t5 as hf_t5
from ptuning_jax import methods
from ptuning_jax import models
from ptuning_jax.models import losses
from ptuning_jax.models import seq2seq
from ptuning_jax.training import optimizers
from ptuning_jax.training import partitioning
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.backbones import t5
from ptuning_jax.training import run as run_lib
from ptuning_jax.training import trainer as trainer_lib
from ptuning_jax.data import vocab as vocab_lib
from ptuning_jax.methods import mpt
from ptuning_jax.training.recipes import mpt as mpt_recipe

K, P, R = 3, 4, 2


def _method(cfg, **kw):
  return mpt.MPT(mt.spec(cfg), **dict(dict(num_tasks=K, length=P, rank=R), **kw))


@pytest.mark.parametrize("num_tasks,rank", [(1, 1), (K, 1), (K, R)])
def test_param_count_is_p_h_plus_k_r_p_plus_h(num_tasks, rank):
  for cfg in (mt.config(), t5.get_config("base")):
    h = cfg.d_model
    count = methods.count_params(_method(cfg, num_tasks=num_tasks, rank=rank))
    assert count == P * h + num_tasks * rank * (P + h) == mpt.num_params(
        h, P, num_tasks, rank)
  # The paper's target stage at T5-Base: 76,800 + 100 + 768.
  assert methods.count_params(mpt.MPT(mt.spec(t5.get_config("base")))) == 77_668


def test_task_prompt_is_shared_prompt_times_rank_r_update():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  method = _method(cfg)
  tr = mt.init(method, params)
  assert tr["prompt"].shape == (P, cfg.d_model)
  assert tr["prefix_task_cols"].shape == (K, P, R)
  assert tr["prefix_task_rows"].shape == (K, R, cfg.d_model)
  assert 0.5 < tr["prompt"].std() < 1.5  # PEFT RANDOM: N(0, 1)
  assert 0.01 < tr["prefix_task_cols"].std() < 0.04  # N(0, 0.02)
  index = np.array([2, 0, 1, 2], np.int32)
  x = np.random.default_rng(0).normal(size=(4, 5, cfg.d_model)).astype(np.float32)
  tokens, mask = np.ones((4, 5), np.int32), np.ones((4, 5), bool)
  hk = method.apply({"params": tr}, 4, batch={"task_index": index})
  out, out_mask = hk.inputs["encoder"](x, tokens, mask)
  for b, k in enumerate(index):
    update = sum(np.outer(tr["prefix_task_cols"][k][:, i], tr["prefix_task_rows"][k][i])
                 for i in range(R))  # sum of rank-one terms u_i v_i^T
    np.testing.assert_allclose(out[b, :P], tr["prompt"] * update, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(out[b, P:], x[b])
  assert out_mask.shape == (4, P + 5) and out_mask.all()
  folded, folded_params = mpt.fold(method, tr, task=2)
  np.testing.assert_allclose(folded_params["prompt"], out[0, :P], rtol=1e-6)
  assert isinstance(folded, prompt_tuning.SoftPrompt)
  with pytest.raises(ValueError, match=r"task_index values \[3\]"):
    method.apply({"params": tr}, 4, batch={"task_index": index + 1}).inputs["encoder"](
        x, tokens, mask)
  with pytest.raises(ValueError, match="needs the batch feature 'task_index'"):
    method.apply({"params": tr}, 4).inputs["encoder"](x, tokens, mask)
  # Inside jit a bad index cannot raise: that example's prompt is NaN.
  jitted = jax.jit(lambda i: method.apply({"params": tr}, 4, batch={"task_index": i})
                   .inputs["encoder"](x, tokens, mask)[0])
  bad = np.asarray(jitted(jnp.asarray([0, 5, 1, 1])))
  assert np.isnan(bad[1, :P]).all() and np.isfinite(bad[[0, 2, 3]]).all()


def _write_source(directory, h, num_tasks=K, rank=R, seed=0):
  rng = np.random.default_rng(seed)
  source = {"prompt": rng.normal(size=(P, h)),
            "prefix_task_cols": rng.normal(size=(num_tasks, P, rank)),
            "prefix_task_rows": rng.normal(size=(num_tasks, rank, h))}
  os.makedirs(directory, exist_ok=True)
  for name, value in source.items():
    np.save(os.path.join(directory, f"{name}.npy"), value.astype(np.float32))
  return {k: v.astype(np.float32) for k, v in source.items()}


def test_peft_init_modes(tmp_path):
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  h = cfg.d_model
  src = _write_source(str(tmp_path / "src"), h)
  target = functools.partial(mpt.MPT, mt.spec(cfg), num_tasks=1, length=P, rank=R,
                             source=str(tmp_path / "src"))
  avg = mt.init(target(init_mode="AVERAGE_SOURCE_TASKS"), params)
  np.testing.assert_array_equal(avg["prompt"], src["prompt"])
  np.testing.assert_allclose(avg["prefix_task_cols"][0], src["prefix_task_cols"].mean(0),
                             rtol=1e-6)
  np.testing.assert_allclose(avg["prefix_task_rows"][0], src["prefix_task_rows"].mean(0),
                             rtol=1e-6)
  exact = mt.init(target(init_mode="EXACT_SOURCE_TASK", source_task=2), params)
  np.testing.assert_array_equal(exact["prefix_task_cols"][0], src["prefix_task_cols"][2])
  np.testing.assert_array_equal(exact["prefix_task_rows"][0], src["prefix_task_rows"][2])
  shared = mt.init(target(init_mode="ONLY_SOURCE_SHARED"), params)
  np.testing.assert_array_equal(shared["prompt"], src["prompt"])
  assert 0.005 < shared["prefix_task_rows"].std() < 0.04  # fresh N(0, 0.02)
  # EXACT/AVERAGE with K target tasks: every task starts from the same factors.
  tiled = mt.init(target(num_tasks=2, init_mode="EXACT_SOURCE_TASK", source_task=1), params)
  np.testing.assert_array_equal(tiled["prefix_task_rows"],
                                np.stack([src["prefix_task_rows"][1]] * 2))
  text = mt.init(target(init_mode="TEXT", prompt_text="AB", source=None), params)
  ids = vocab_lib.ByteVocab().encode("AB") + [vocab_lib.ByteVocab().eos_id]
  table = np.asarray(params["token_embedder"]["embedding"])
  np.testing.assert_array_equal(text["prompt"], table[(ids * 2)[:P]])
  with pytest.raises(ValueError, match="source_task=5 outside the 3 source tasks"):
    mt.init(target(init_mode="EXACT_SOURCE_TASK", source_task=5), params)
  with pytest.raises(ValueError, match="needs `source`"):
    mt.init(target(init_mode="ONLY_SOURCE_SHARED", source=None), params)
  with pytest.raises(ValueError, match=r"do not form \[P=3"):
    mt.init(target(init_mode="ONLY_SOURCE_SHARED", length=3), params)
  with pytest.raises(ValueError, match="init_mode='AVERAGE'"):
    mt.init(target(init_mode="AVERAGE"), params)


def test_peft_safetensors_source_uses_the_first_p_rows(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  rng = np.random.default_rng(1)
  adapter = {"prompt_embeddings": rng.normal(size=(2 * P, cfg.d_model)),
             "prefix_task_cols": rng.normal(size=(K, 2 * P, 1)),
             "prefix_task_rows": rng.normal(size=(K, 1, cfg.d_model))}
  path = str(tmp_path / "adapter_model.safetensors")
  save_file({k: v.astype(np.float32) for k, v in adapter.items()}, path)
  tr = mt.init(mpt.MPT(mt.spec(cfg), length=P, init_mode="AVERAGE_SOURCE_TASKS", source=path),
               params)
  np.testing.assert_array_equal(tr["prompt"], adapter["prompt_embeddings"][:P]
                                .astype(np.float32))
  np.testing.assert_allclose(tr["prefix_task_cols"][0],
                             adapter["prefix_task_cols"][:, :P].mean(0), rtol=1e-5)


def _teacher_files(tmp_path, cfg, values):
  files = []
  for k, value in enumerate(values):
    files.append(str(tmp_path / f"teacher_{k}.npy"))
    np.save(files[-1], np.asarray(value, np.float32))
  return files


def test_distillation_loss(tmp_path):
  cfg = mt.config()
  module, params = mt.frozen(cfg)
  method = _method(cfg, num_tasks=2, rank=1)
  tr = mt.init(method, params)
  batch = mt.make_batch(cfg.vocab_size)
  batch["task_index"] = np.array([0, 1] * 4, np.int32)
  rng = np.random.default_rng(3)
  teachers = [rng.normal(size=(P, cfg.d_model)) for _ in range(2)]
  term = mpt_recipe.distillation(_teacher_files(tmp_path, cfg, teachers), weight=0.5,
                                 temperature=2.0)
  assert isinstance(term, losses.PromptDistillation)
  np.testing.assert_array_equal(term.teachers, np.stack(teachers).astype(np.float32))
  model = seq2seq.Seq2SeqModel(module, method, loss_terms=(term,))

  @jax.jit
  def run(teachers, tr):  # one compilation for both teacher sets
    with_teachers = dataclasses.replace(term, teachers=teachers)
    distilled = dataclasses.replace(model, loss_terms=(with_teachers,))
    (objective, metrics), grads = jax.value_and_grad(distilled.loss_fn, has_aux=True)(
        {"method": tr}, params, batch)
    student = distilled.forward(params, batch, method.apply({"params": tr}, 8, batch=batch))
    teacher = distilled.forward(params, batch, with_teachers.teacher_hooks(model.spec, batch))
    return objective, metrics, grads, student, teacher

  # Teachers equal to the student's own task prompts: no distillation signal.
  own = np.stack([mpt.fold(method, tr, task=k)[1]["prompt"] for k in range(2)])
  objective, metrics, _, student, _ = run(own, tr)
  assert abs(float(metrics["distill_kl"])) < 1e-6
  assert abs(float(metrics["distill_hidden"])) < 1e-10
  total, weight, _ = losses.cross_entropy(student.logits, batch["decoder_target_tokens"],
                                          batch["decoder_loss_weights"])
  np.testing.assert_allclose(metrics["loss"], total / weight, rtol=1e-6)
  # Other teachers: L = L_PLM + lambda (KL + MSE), KL checked by hand.
  objective, metrics, grads, student, teacher = run(term.teachers, tr)
  assert metrics["distill_kl"] > 1e-4 and metrics["distill_hidden"] > 1e-4
  np.testing.assert_allclose(objective, metrics["loss"] + 0.5 * (
      metrics["distill_kl"] + metrics["distill_hidden"]), rtol=1e-6)
  ls = jax.nn.log_softmax(np.asarray(student.logits) / 2.0, -1)
  lt = jax.nn.log_softmax(np.asarray(teacher.logits) / 2.0, -1)
  w = batch["decoder_loss_weights"]
  kl = (np.sum(np.exp(lt) * (lt - ls), -1) * w).sum() / w.sum()
  np.testing.assert_allclose(metrics["distill_kl"], kl, rtol=1e-5)
  enc_mask = batch["encoder_input_tokens"] > 0
  se = [np.mean(np.square(np.asarray(a) - np.asarray(b)), -1) for a, b in (
      (student.encoded[:, P:], teacher.encoded[:, P:]), (student.decoded, teacher.decoded))]
  np.testing.assert_allclose(metrics["distill_hidden"], (
      (se[0] * enc_mask).sum() + (se[1] * w).sum()) / (enc_mask.sum() + w.sum()), rtol=1e-5)
  assert all(np.abs(g).max() > 0 for g in jax.tree_util.tree_leaves(grads))
  three = _method(cfg)  # K = 3 tasks, 2 teachers: the loss fails at trace time
  with pytest.raises(ValueError, match="2 teacher prompts for a method with num_tasks=3"):
    jax.eval_shape(dataclasses.replace(model, method=three).loss_fn,
                   {"method": mt.init(three, params)}, params, batch)
  with pytest.raises(ValueError, match=r"Teacher prompt .*teacher_1.npy has shape \(3,\)"):
    mpt_recipe.distillation(_teacher_files(tmp_path, cfg, [teachers[0], np.ones(3)]))
  del batch["task_index"]
  with pytest.raises(ValueError, match="needs the batch feature 'task_index'"):
    term.teacher_hooks(model.spec, batch)


def _spec():
  return backbones.BackboneSpec(checkpoint_dir=mt.backbone_dir())


# Adafactor divides each gradient by its own root mean square, so an update
# carries the gradient's *relative* float32 error (reduction order differs
# between meshes; small components have large relative error) at full
# learning-rate size: at 0.3 two steps moved a prompt entry by 1.1e-5 between
# the (2, 4) and (1, 1) meshes on jax 0.11 (3.9e-6 on 0.10). A smaller rate
# keeps the sharded == unsharded comparison well conditioned at 1e-5.
DRIVER_OPTIMIZER = optimizers.OptimizerConfig(learning_rate=0.03)


def _unsharded_distillation_steps(teacher_files, steps, extra_steps=4):
  """What `run_stage_one` trains, on a (1, 1) mesh. Returns the trainables
  after `steps` and the losses of `extra_steps` more steps on one batch."""
  ckpt = mt.backbone_dir()
  cfg = hf_t5.load_config(ckpt)
  mesh = partitioning.make_mesh(1, 1, devices=jax.devices()[:1])
  rules = partitioning.standard_logical_axis_rules()
  module = t5.T5(cfg)
  frozen_params = hf_t5.load_params(ckpt, cfg, mesh=mesh, rules=rules)
  method = mpt.MPT(mt.spec(cfg), num_tasks=len(teacher_files), length=P, factor_stddev=1.0)
  model = seq2seq.Seq2SeqModel(module, method,
                               loss_terms=(mpt_recipe.distillation(teacher_files),))
  data = mt.task_index_data()
  tx = optimizers.build_optimizer(DRIVER_OPTIMIZER)
  state = trainer_lib.create_train_state(
      model.init_trainables(jax.random.key(42), mt.context(frozen_params, data.vocab)),
      tx, 42)
  trainer = trainer_lib.Trainer(model, tx, mesh, rules,
                                backbones.frozen_shardings(backbones.T5, module, mesh,
                                                           rules))
  state, batches = trainer.place_state(state), data.train_iterator()
  for _ in range(steps):
    state, _ = trainer.train_step(state, frozen_params, trainer.place_batch(next(batches)))
  after = jax.tree_util.tree_map(np.asarray, jax.device_get(state.params))["method"]
  fixed, losses = trainer.place_batch(next(batches)), []
  for _ in range(extra_steps):
    state, metrics = trainer.train_step(state, frozen_params, fixed)
    losses.append(float(metrics["loss"] + metrics["distill_kl"] + metrics["distill_hidden"]))
  return after, losses


@pytest.mark.slow
def test_stage_one_then_stage_two_drivers(tmp_path):
  h = mt.sharded_config().d_model
  rng = np.random.default_rng(0)
  files = _teacher_files(tmp_path, None, [rng.normal(size=(P, h)) for _ in range(2)])
  common = dict(backbone=_spec(), optimizer=DRIVER_OPTIMIZER,
                log_every=1, progress_bar=False,
                mesh=run_lib.MeshConfig(data=2, model=4))
  # Factors of unit scale: at PEFT's N(0, 0.02) the task prompts are ~4e-4,
  # the first RMS norm amplifies gradients ~1e3 and float32 reduction order
  # alone moves Adafactor's normalised updates by more than 1e-5.
  one = mpt_recipe.run_stage_one(model_dir=str(tmp_path / "one"), teacher_files=files,
                          length=P, num_steps=2, data=mt.task_index_data(),
                          factor_stddev=1.0, **common)
  assert np.isfinite(one["train/loss"]) and one["train/distill_kl"] > 0
  assert one["trainable_params"] == mpt.num_params(h, P, 2)
  source = one["source_dir"]
  # The sharded (2, 4) distillation steps equal the unsharded ones (this is
  # also MPT's per-method training check), and training lowers the loss.
  reference, losses = _unsharded_distillation_steps(files, steps=2)
  assert losses[-1] < losses[0], losses
  assert sorted(reference) == sorted(f[:-4] for f in os.listdir(source))
  for name, value in reference.items():
    np.testing.assert_allclose(np.load(os.path.join(source, f"{name}.npy")), value,
                               atol=1e-5, rtol=0, err_msg=name)
  assert sorted(os.listdir(source)) == ["prefix_task_cols.npy", "prefix_task_rows.npy",
                                        "prompt.npy"]
  two = mpt_recipe.run_stage_two(model_dir=str(tmp_path / "two"), source=source, num_steps=1,
                          data=mt.smoke_data(), **common)
  assert two["trainable_params"] == mpt.num_params(h, P, 1)
  first = np.load(os.path.join(source, "prompt.npy"))
  start = mt.init(mpt.MPT(mt.spec(mt.sharded_config()), length=P, source=source,
                          init_mode="AVERAGE_SOURCE_TASKS"),
                  mt.random_params(mt.sharded_config()))
  np.testing.assert_array_equal(start["prompt"], first)  # stage two starts from P*
  trained = np.load(os.path.join(two["export_dir"], "prompt.npy"))
  assert trained.shape == first.shape and not np.array_equal(trained, first)


def test_gin_files_wire_both_stages(tmp_path):
  import gin  # pylint: disable=g-import-not-at-top
  from ptuning_jax import gin_utils  # pylint: disable=g-import-not-at-top
  cfg = mt.config()
  module, params = mt.frozen(cfg)
  rng = np.random.default_rng(0)
  files = _teacher_files(tmp_path, cfg, [rng.normal(size=(P, cfg.d_model))] * 2)
  gin_utils.parse(["gin/methods/mpt.gin"], [
      f"TEACHER_FILES = {files}", "MPT_NUM_TASKS = 2", f"PROMPT_LENGTH = {P}",
      "MPT_DISTILL_WEIGHT = 0.5"])
  try:
    method = gin.query_parameter("%METHOD").scoped_configurable_fn(spec=mt.spec(cfg))
    backbone = backbones.Backbone(backbones.T5, module, params, None)
    model = gin.get_configurable(models.build)(backbone, method, mt.smoke_data())
  finally:
    gin.clear_config()
  assert isinstance(model, seq2seq.Seq2SeqModel) and model.method is method
  (term,) = model.loss_terms
  assert isinstance(term, losses.PromptDistillation) and term.weight == 0.5
  assert term.teachers.shape == (2, P, cfg.d_model)
  assert (method.num_tasks, method.length, method.init_mode) == (2, P, "RANDOM")
  source = str(tmp_path / "src")
  _write_source(source, cfg.d_model, rank=1)
  gin_utils.parse(["gin/methods/mpt_target.gin"], [
      f"MPT_SOURCE = '{source}'", f"PROMPT_LENGTH = {P}", "MPT_INIT = 'EXACT_SOURCE_TASK'",
      "MPT_SOURCE_TASK = 1"])
  try:
    target = gin.query_parameter("%METHOD").scoped_configurable_fn(spec=mt.spec(cfg))
  finally:
    gin.clear_config()
  start = mt.init(target, params)
  np.testing.assert_array_equal(start["prefix_task_rows"][0],
                                np.load(os.path.join(source, "prefix_task_rows.npy"))[1])
