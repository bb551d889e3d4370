"""Multi-task prompts: counts, add/concat, task selection, bad indices, training."""
import jax
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax import methods
from ptuning_jax.methods import initializers
from ptuning_jax.methods import multitask

K, P, PT = 3, 2, 4


def _method(cfg, **kw):
  kw = dict(dict(num_tasks=K, length=P, shared_initializer=initializers.normal(),
                 task_initializer=initializers.normal()), **kw)
  return multitask.MultiTaskPrompt(mt.spec(cfg), **kw)


def test_param_counts():
  cfg = mt.config()
  h = cfg.d_model
  assert methods.count_params(_method(cfg)) == (1 + K) * P * h
  assert methods.count_params(_method(cfg, combine="concat", task_length=PT)) == (
      P * h + K * PT * h)
  assert multitask.num_params(h, K, P, PT) == P * h + K * PT * h


def _inputs(cfg, batch=4, length=5):
  x = np.random.default_rng(0).normal(size=(batch, length, cfg.d_model)).astype(np.float32)
  tokens = np.arange(2, 2 + batch * length, dtype=np.int32).reshape(batch, length)
  return x, tokens, np.ones((batch, length), bool)


@pytest.mark.parametrize("combine", ["add", "concat"])
def test_prompts_combine_shared_and_selected_task(combine):
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  method = _method(cfg, combine=combine, task_length=P if combine == "add" else PT)
  tr = mt.init(method, params)
  index = np.array([2, 0, 2, 1], np.int32)
  x, tokens, mask = _inputs(cfg)
  hk = method.apply({"params": tr}, 4, batch={"task_index": index})
  out, out_mask = hk.inputs["encoder"](x, tokens, mask)
  shared, tasks = tr["shared_prompt"], tr["task_prompts"]
  for b, k in enumerate(index):
    if combine == "add":
      np.testing.assert_allclose(out[b, :P], shared + tasks[k], rtol=1e-6)
      np.testing.assert_array_equal(out[b, P:], x[b])
    else:
      np.testing.assert_array_equal(out[b, :P], shared)
      np.testing.assert_array_equal(out[b, P:P + PT], tasks[k])
      np.testing.assert_array_equal(out[b, P + PT:], x[b])
  assert out_mask.shape == out.shape[:2] and out_mask.all()


def test_add_starts_from_the_shared_prompt_by_default():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  tr = mt.init(multitask.MultiTaskPrompt(mt.spec(cfg), num_tasks=K, length=P), params)
  np.testing.assert_array_equal(tr["task_prompts"], 0.0)


def test_first_token_selects_the_task_and_is_removed():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  ids = (90, 91, 92)
  method = _method(cfg, task_index_source="first_token", task_token_ids=ids)
  tr = mt.init(method, params)
  x, tokens, mask = _inputs(cfg)
  tokens[:, 0] = [92, 90, 91, 90]
  out, out_mask = method.apply({"params": tr}, 4).inputs["encoder"](x, tokens, mask)
  assert out.shape == (4, P + 4, cfg.d_model) and out_mask.shape == (4, P + 4)
  for b, k in enumerate([2, 0, 1, 0]):
    np.testing.assert_allclose(out[b, :P], tr["shared_prompt"] + tr["task_prompts"][k],
                               rtol=1e-6)
    np.testing.assert_array_equal(out[b, P:], x[b, 1:])
  tokens[1, 0] = 7  # not a task token
  with pytest.raises(ValueError, match=r"values \[-1\]"):
    method.apply({"params": tr}, 4).inputs["encoder"](x, tokens, mask)


def test_bad_or_missing_task_index():
  cfg = mt.config()
  module, params = mt.frozen(cfg)
  method = _method(cfg)
  tr = mt.init(method, params)
  x, tokens, mask = _inputs(cfg)
  with pytest.raises(ValueError, match="needs the batch feature 'task_index'"):
    method.apply({"params": tr}, 4).inputs["encoder"](x, tokens, mask)
  with pytest.raises(ValueError, match=r"values \[3\] outside \[0, num_tasks=3\)"):
    method.apply({"params": tr}, 4, batch={"task_index": np.array([0, 3, 1, 2])}
                 ).inputs["encoder"](x, tokens, mask)
  # Inside jit the index is traced: a bad one makes the loss NaN, not silent.
  batch = dict(mt.make_batch(cfg.vocab_size), task_index=np.array([0, 1, 2, 9] * 2))
  loss = jax.jit(lambda tr, b: mt.loss(module, method, tr, params, b)[0])
  assert np.isnan(loss(tr, batch))
  batch["task_index"] = np.array([0, 1, 2, 0] * 2)
  assert np.isfinite(loss(tr, batch))


def test_config_errors():
  cfg = mt.config()
  with pytest.raises(ValueError, match="task_length == length"):
    methods.count_params(_method(cfg, task_length=PT))
  with pytest.raises(ValueError, match="3 distinct task_token_ids"):
    methods.count_params(_method(cfg, task_index_source="first_token",
                                 task_token_ids=(5, 5, 6)))


def test_training_sharded_equals_unsharded(tmp_path):
  cfg = mt.sharded_config()
  data = mt.task_index_data()
  result = mt.check_training(tmp_path, mt.partial(
      multitask.MultiTaskPrompt, num_tasks=data.num_tasks, length=P, task_length=PT,
      combine="concat", shared_initializer=initializers.sampled_vocab(100),
      task_initializer=initializers.sampled_vocab(100)), data=data)
  assert result["trainable_params"] == P * cfg.d_model + data.num_tasks * PT * cfg.d_model
