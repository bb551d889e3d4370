"""Tests for ptuning_jax.training.optimizers.

Dimension letters: B batch, M microbatches, P prompt length, H d_model.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptuning_jax.training import optimizers as opt

P, H = 5, 8


def _t5x_adafactor_reference(param, grads, lr=0.3, decay_rate=0.8, wd=1e-5,
                             clip=1.0, eps1=1e-30, factored=False):
  """numpy transcription of T5X `Adafactor.apply_param_gradient`.

  Args:
    param: [P, H] initial value.
    grads: list of [P, H] gradients, one per step.
    factored: factor the second moment over rows (axis 1) / columns (axis 0).

  Returns:
    list of [P, H] parameters after each step.
  """
  param = param.astype(np.float64)
  v = np.zeros_like(param)
  v_row = np.zeros(param.shape[0])  # mean over axis 1
  v_col = np.zeros(param.shape[1])  # mean over axis 0
  out = []
  for step, grad in enumerate(grads):
    grad = grad.astype(np.float64)
    beta2 = 1.0 - (step + 1.0) ** (-decay_rate)
    grad_sqr = grad * grad + eps1
    if factored:
      v_row = beta2 * v_row + (1 - beta2) * grad_sqr.mean(axis=1)
      v_col = beta2 * v_col + (1 - beta2) * grad_sqr.mean(axis=0)
      row_factor = (v_row / v_row.mean()) ** -0.5
      col_factor = v_col ** -0.5
      y = grad * row_factor[:, None] * col_factor[None, :]
    else:
      v = beta2 * v + (1 - beta2) * grad_sqr
      y = grad / np.sqrt(v)
    y = y / max(1.0, np.sqrt(np.mean(y * y)) / clip)
    param = (1.0 - wd) * param - lr * y
    out.append(param)
  return out


def _run(tx, params, grads):
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out, state


def _grads(seed, n=3, shape=(P, H)):
  rng = np.random.default_rng(seed)
  # Growing scales make later steps' RMS(y) exceed 1, so clipping matters.
  return [rng.normal(size=shape).astype(np.float32) * 10.0 ** k
          for k in range(n)]


def test_adafactor_defaults_match_t5x_reference():
  rng = np.random.default_rng(0)
  param = rng.uniform(-0.5, 0.5, size=(P, H)).astype(np.float32)
  grads = _grads(1)
  ours, state = _run(opt.adafactor(), jnp.asarray(param),
                     [jnp.asarray(g) for g in grads])
  ref = _t5x_adafactor_reference(param, grads)
  for step, (a, b) in enumerate(zip(ours, ref)):
    np.testing.assert_allclose(np.asarray(a), b, atol=1e-5, rtol=0,
                               err_msg=f"step {step}")
  # Not factored: one full second moment [P, H].
  v = jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "v_row"))[0].v
  assert v.shape == (P, H)
  # Clipping was active: the unclipped update would differ.
  noclip = _t5x_adafactor_reference(param, grads, clip=1e9)
  assert np.abs(noclip[-1] - ref[-1]).max() > 1e-3


def test_adafactor_factored_matches_reference():
  rng = np.random.default_rng(2)
  param = rng.normal(size=(P, H)).astype(np.float32)
  grads = _grads(3)
  tx = opt.adafactor(factored=True, min_dim_size_to_factor=4)
  ours, state = _run(tx, jnp.asarray(param), [jnp.asarray(g) for g in grads])
  ref = _t5x_adafactor_reference(param, grads, factored=True)
  for step, (a, b) in enumerate(zip(ours, ref)):
    np.testing.assert_allclose(np.asarray(a), b, atol=1e-5, rtol=0,
                               err_msg=f"step {step}")
  fstate = jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "v_row"))[0]
  assert fstate.v_row.shape == (P,) and fstate.v_col.shape == (H,)


def test_adafactor_weight_decay_not_multiplied_by_lr():
  # Zero gradient: y = 0, so the update is the decay alone, -wd * param.
  param = jnp.full((P, H), 2.0)
  tx = opt.adafactor(learning_rate=0.3, weight_decay_rate=0.01)
  (new,), _ = _run(tx, param, [jnp.zeros((P, H))])
  np.testing.assert_allclose(np.asarray(new), 2.0 * (1 - 0.01), rtol=1e-6)


def test_adafactor_state_is_float32_for_bf16_params():
  param = jnp.ones((P, H), jnp.bfloat16)
  tx = opt.adafactor()
  state = tx.init(param)
  dtypes = {x.dtype for x in jax.tree.leaves(state) if x.ndim}
  assert dtypes == {jnp.dtype(jnp.float32)}
  updates, _ = tx.update(jnp.ones((P, H), jnp.bfloat16), state, param)
  assert updates.dtype == jnp.bfloat16


def test_adafactor_bad_args():
  with pytest.raises(ValueError, match="clipping_threshold"):
    opt.adafactor(clipping_threshold=0.0)
  with pytest.raises(ValueError, match="decay_rate"):
    opt.adafactor(decay_rate=-1.0)


def _trainables():
  return {
      "encoder": {"prompt": {"prompt": jnp.ones((P, H))}},
      "lowrank": {"a": jnp.ones((P, 2)), "b": jnp.ones((2, H))},
      "head": {"kernel": jnp.ones((H, 3))},
  }


def test_param_groups_get_their_learning_rates():
  config = opt.OptimizerConfig(
      name="adamw", learning_rate=1e-2,
      param_groups=(opt.ParamGroup("prompt", r"(^|/)prompt(/|$)", 3e-1),
                    opt.ParamGroup("lowrank", r"^lowrank/", 1e-4)))
  tx = opt.build_optimizer(config)
  params = _trainables()
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # First Adam step with constant grads is -lr * sign(g) (up to eps).
  prompt = float(updates["encoder"]["prompt"]["prompt"][0, 0])
  lowrank = float(updates["lowrank"]["a"][0, 0])
  head = float(updates["head"]["kernel"][0, 0])
  np.testing.assert_allclose(prompt / lowrank, 3e-1 / 1e-4, rtol=1e-5)
  np.testing.assert_allclose(head, -1e-2, rtol=1e-5)
  assert float(updates["lowrank"]["b"][0, 0]) == pytest.approx(lowrank)


def test_param_groups_with_adafactor_and_weight_decay_override():
  config = opt.OptimizerConfig(
      learning_rate=0.0,
      param_groups=(opt.ParamGroup("prompt", "prompt", 0.0, weight_decay=0.1),))
  tx = opt.build_optimizer(config)
  params = _trainables()
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params),
                         params)
  # lr 0: only decay acts; prompt group 0.1, default group 1e-5.
  np.testing.assert_allclose(updates["encoder"]["prompt"]["prompt"], -0.1,
                             rtol=1e-6)
  np.testing.assert_allclose(updates["head"]["kernel"], -1e-5, rtol=1e-6)


def test_group_labels_and_errors():
  params = _trainables()
  labels = opt.group_labels(params, (opt.ParamGroup("lr", "^lowrank/", 1.0),))
  assert labels["lowrank"]["a"] == "lr"
  assert labels["head"]["kernel"] == "default"
  with pytest.raises(ValueError, match="nomatch_xyz"):
    opt.group_labels(params, (opt.ParamGroup("x", "nomatch_xyz", 1.0),))
  with pytest.raises(ValueError, match="lowrank/a.*several"):
    opt.group_labels(params, (opt.ParamGroup("x", "lowrank", 1.0),
                              opt.ParamGroup("y", "/a$", 1.0)))
  tx = opt.build_optimizer(opt.OptimizerConfig(
      param_groups=(opt.ParamGroup("x", "nomatch_xyz", 1.0),)))
  with pytest.raises(ValueError, match="nomatch_xyz"):
    tx.init(params)


def test_config_errors():
  with pytest.raises(ValueError, match="sgd"):
    opt.OptimizerConfig(name="sgd")
  with pytest.raises(ValueError, match="default"):
    opt.OptimizerConfig(param_groups=(opt.ParamGroup("default", "a", 1.0),))
  with pytest.raises(ValueError, match="repeated"):
    opt.OptimizerConfig(param_groups=(opt.ParamGroup("a", "a", 1.0),
                                      opt.ParamGroup("a", "b", 1.0)))
  with pytest.raises(ValueError, match="bad regex"):
    opt.OptimizerConfig(param_groups=(opt.ParamGroup("a", "(", 1.0),))
  config = opt.OptimizerConfig(param_groups=[opt.ParamGroup("a", "a", 1.0)])
  assert isinstance(config.param_groups, tuple)


def test_clip_grad_norm_is_global_and_before_groups():
  config = opt.OptimizerConfig(
      name="adamw", learning_rate=0.1, clip_grad_norm=1.0,
      param_groups=(opt.ParamGroup("b", "^b$", 0.1),))
  tx = opt.build_optimizer(config)
  params = {"a": jnp.zeros(4), "b": jnp.zeros(3)}
  rng = np.random.default_rng(0)
  # Norms 10 then 0.1: clipping changes their relative scale, which Adam's
  # second step sees (a common scale would cancel out).
  raw = []
  for scale in (10.0, 0.1):
    g = {"a": rng.normal(size=4), "b": rng.normal(size=3)}
    norm = np.sqrt(sum(np.sum(v ** 2) for v in g.values()))
    raw.append({k: (v * scale / norm).astype(np.float32) for k, v in g.items()})
  clipped = [{k: v * min(1.0, 1.0 / (scale)) for k, v in g.items()}
             for g, scale in zip(raw, (10.0, 0.1))]
  ref_tx = optax.adamw(0.1, weight_decay=0.0)
  ours, _ = _run(tx, params, [jax.tree.map(jnp.asarray, g) for g in raw])
  ref, _ = _run(ref_tx, params, [jax.tree.map(jnp.asarray, g) for g in clipped])
  unclipped, _ = _run(ref_tx, params,
                      [jax.tree.map(jnp.asarray, g) for g in raw])
  for k in ("a", "b"):
    np.testing.assert_allclose(ours[-1][k], ref[-1][k], atol=1e-6, rtol=0)
  assert np.abs(np.asarray(ours[-1]["a"] - unclipped[-1]["a"])).max() > 1e-3


def test_schedules():
  const = opt.make_schedule("constant", 0.3)
  assert float(const(0)) == pytest.approx(0.3)
  assert float(const(10 ** 6)) == pytest.approx(0.3)
  warm = opt.make_schedule("constant", 1.0, warmup_steps=10)
  np.testing.assert_allclose([float(warm(t)) for t in (0, 5, 10, 20)],
                             [0.0, 0.5, 1.0, 1.0], rtol=1e-6)
  lin = opt.make_schedule("linear", 2.0, warmup_steps=10, total_steps=110,
                          end_lr_factor=0.1)
  np.testing.assert_allclose([float(lin(t)) for t in (5, 10, 60, 110, 200)],
                             [1.0, 2.0, 2.0 * (0.1 + 0.9 * 0.5), 0.2, 0.2],
                             rtol=1e-6)
  cos = opt.make_schedule("cosine", 1.0, warmup_steps=0, total_steps=100)
  np.testing.assert_allclose([float(cos(t)) for t in (0, 50, 100)],
                             [1.0, 0.5, 0.0], atol=1e-6)
  rs = opt.make_schedule("rsqrt", 1.0, warmup_steps=100)
  np.testing.assert_allclose([float(rs(t)) for t in (50, 100, 400)],
                             [0.5, 1.0, 0.5], rtol=1e-6)
  with pytest.raises(ValueError, match="total_steps"):
    opt.make_schedule("linear", 1.0, warmup_steps=10)
  with pytest.raises(ValueError, match="exp"):
    opt.make_schedule("exp", 1.0)


def test_config_schedule_reaches_the_updates():
  config = opt.OptimizerConfig(learning_rate=1.0, weight_decay=0.0,
                               warmup_steps=4, schedule="constant")
  tx = opt.build_optimizer(config)
  params = {"w": jnp.zeros(3)}
  grads = [{"w": jnp.ones(3)}] * 3
  outs, _ = _run(tx, params, grads)
  # Step t uses lr t / 4; with constant unit grads Adafactor's y is 1.
  steps = np.diff([np.zeros(3)] + [np.asarray(o["w"]) for o in outs], axis=0)
  np.testing.assert_allclose(steps[:, 0], [0.0, -0.25, -0.5], atol=1e-6)


def _mean_loss(params, batch):
  pred = batch["x"] @ params["w"] + params["b"]  # [B]
  err = pred - batch["y"]
  loss = jnp.mean(err ** 2)
  return loss, {"mae": jnp.mean(jnp.abs(err))}


def test_sizes():
  params = _trainables()
  assert opt.num_params(params) == P * H + P * 2 + 2 * H + H * 3
  tx = opt.adafactor()
  state = tx.init({"prompt": jnp.ones((P, H))})
  # Unfactored: v [P, H] f32, v_row and v_col [1] each, plus an int32 count.
  assert opt.optimizer_state_bytes(state) == 4 * (P * H + 1 + 1) + 4
  abstract = jax.eval_shape(tx.init, {"prompt": jnp.ones((P, H))})
  assert opt.optimizer_state_bytes(abstract) == 4 * (P * H + 2) + 4
