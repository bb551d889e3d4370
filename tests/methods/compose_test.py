"""Composition: DePT from an MPT prompt, methods from files, merged hooks."""
import functools
import os

import jax
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax import methods
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.methods import compose
from ptuning_jax.methods import dept
from ptuning_jax.methods import ia3
from ptuning_jax.methods import low_rank
from ptuning_jax.methods import mpt
from ptuning_jax.methods import prefix_tuning
from ptuning_jax.methods import residual

P, K = 6, 3


def _mpt_export(directory, cfg, params):
  """A stage-one MPT result written as its checkpoint `.npy` export."""
  method = mpt.MPT(mt.spec(cfg), num_tasks=K, length=P)
  tr = mt.init(method, params, seed=3)
  tr["prefix_task_cols"] = tr["prefix_task_cols"] * 50  # factors of unit scale
  tr["prefix_task_rows"] = tr["prefix_task_rows"] * 50
  os.makedirs(directory, exist_ok=True)
  for name, value in tr.items():
    np.save(os.path.join(directory, f"{name}.npy"), value)
  return method, tr


def test_dept_initialised_from_an_mpt_prompt(tmp_path):
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  source = str(tmp_path / "mpt")
  method, tr = _mpt_export(source, cfg, params)
  for task in (None, 1):
    want = compose.mpt_prompt(source, task)
    if task is not None:  # the task prompt MPT itself uses
      np.testing.assert_array_equal(want, mpt.fold(method, tr, task=task)[1]["prompt"])
    else:  # MPT's target initialisation: the averaged factors
      target = mt.init(mpt.MPT(mt.spec(cfg), length=P, source=source,
                               init_mode="AVERAGE_SOURCE_TASKS"), params)
      np.testing.assert_array_equal(
          want, mpt.fold(mpt.MPT(mt.spec(cfg), length=P), target)[1]["prompt"])
    m = 4  # DePT's prompt is shorter: its first m rows
    short = dept.DePT(mt.spec(cfg), length=m, rank=2, max_length=9,
                      initializer=compose.from_mpt(source, task))
    start = mt.init(short, params)
    np.testing.assert_array_equal(start["prompt"], want[:m])
    np.testing.assert_array_equal(start["low_rank_b"], 0.0)  # E' = E: starts as MPT's prompt
  later = mt.init(dept.DePT(mt.spec(cfg), length=2, rank=2, max_length=9,
                            initializer=compose.from_mpt(source, 0, start=4)), params)
  np.testing.assert_array_equal(later["prompt"], compose.mpt_prompt(source, 0)[4:6])
  with pytest.raises(ValueError, match=r"has 6 rows; rows \[4, 8\) were asked for"):
    mt.init(dept.DePT(mt.spec(cfg), length=4, rank=2, max_length=9,
                      initializer=compose.from_mpt(source, 0, start=4)), params)
  with pytest.raises(ValueError, match="task=3 outside the 3 tasks"):
    compose.mpt_prompt(source, 3)


def test_methods_start_from_a_prompt_file(tmp_path):
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  rng = np.random.default_rng(0)
  prompt = rng.normal(size=(P, cfg.d_model)).astype(np.float32)
  path = str(tmp_path / "prompt.npy")
  np.save(path, prompt)
  soft = mt.init(compose.started_from(functools.partial(prompt_tuning.SoftPrompt, length=P),
                                      path)(spec=mt.spec(cfg)), params)
  np.testing.assert_array_equal(soft["prompt"], prompt)
  lr = mt.init(low_rank.LowRankPrompt(mt.spec(cfg), length=P, rank=P,
                                      initializer=compose.from_npy(path)), params)
  np.testing.assert_allclose(low_rank.low_rank_prompt(lr["low_rank_a"], lr["low_rank_b"]),
                             prompt, atol=1e-5)  # full-rank SVD of the file's prompt
  shared = mt.init(compose.started_from(
      functools.partial(prefix_tuning.PrefixTuning, length=2, projection_hidden=3),
      path, start=2)(spec=mt.spec(cfg)), params)
  np.testing.assert_array_equal(shared["encoder_self"]["embedding"], prompt[2:4])
  with pytest.raises(ValueError, match=r"holds shape \(6, 12\); the parameter needs "
                     r"\(2, 6, 3, 5\)"):
    mt.init(prefix_tuning.PrefixTuning(mt.spec(cfg), length=6, initializer=compose.from_npy(path)),
            params)
  with pytest.raises(FileNotFoundError, match="nope.npy"):
    mt.init(prompt_tuning.SoftPrompt(mt.spec(cfg), length=P, initializer=compose.from_npy(
        str(tmp_path / "nope.npy"))), params)


def test_composed_hooks_merge():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  parts = (functools.partial(prompt_tuning.SoftPrompt, length=2, initializer=initializers.normal()),
           ia3.IA3)
  method = compose.Composed(mt.spec(cfg), parts=parts, names=("prompt", "ia3"))
  tr = mt.init(method, params)
  assert sorted(tr) == ["ia3", "prompt"]
  assert methods.count_params(method) == 2 * cfg.d_model + ia3.num_params(method.spec)
  tr["ia3"] = jax.tree_util.tree_map(lambda x: x * 1.3, tr["ia3"])
  hk = method.apply({"params": tr}, 2)
  # The composed hooks are the parts' hooks, merged.
  soft = prompt_tuning.SoftPrompt(mt.spec(cfg), length=2).apply({"params": tr["prompt"]}, 2)
  scales = ia3.IA3(mt.spec(cfg)).apply({"params": tr["ia3"]}, 2).scales
  assert set(hk.scales) == set(scales) and hk.kv_prefixes == {}
  for site, value in scales.items():
    np.testing.assert_array_equal(hk.scales[site], value)
  x = np.random.default_rng(0).normal(size=(2, 5, cfg.d_model)).astype(np.float32)
  tokens, mask = np.ones((2, 5), np.int32), np.ones((2, 5), bool)
  assert set(hk.inputs) == set(soft.inputs) == {"encoder"}
  for got, want in zip(hk.inputs["encoder"](x, tokens, mask),
                       soft.inputs["encoder"](x, tokens, mask)):
    np.testing.assert_array_equal(got, want)
  clash = compose.Composed(mt.spec(cfg), parts=(functools.partial(
      prompt_tuning.SoftPrompt, length=2, decoder_length=1,
      initializer=initializers.normal()),) * 2)
  with pytest.raises(ValueError,
                     match=r"part 'part_1': Both hook sets set prefix sites \['decoder'\]"):
    mt.init(clash, params)
  with pytest.raises(ValueError, match="Composed.parts is empty"):
    mt.init(compose.Composed(mt.spec(cfg)), params)


def test_fold_folds_every_part():
  cfg = mt.config()
  parts = (functools.partial(residual.ResidualPrompt, length=3, bottleneck=4,
                             initializer=initializers.normal()), ia3.IA3)
  method = compose.Composed(mt.spec(cfg), parts=parts, names=("residual", "ia3"))
  tr = mt.init(method, mt.frozen(cfg)[1])
  tr["ia3"] = jax.tree_util.tree_map(lambda x: x * 1.3, tr["ia3"])
  folded, folded_params = mt.check_fold(method, tr)
  assert sorted(folded_params["residual"]) == ["prompt"]  # the MLP is gone
  assert methods.count_params(folded) == 3 * cfg.d_model + ia3.num_params(method.spec)


def test_training_sharded_equals_unsharded(tmp_path):
  mt.check_training(tmp_path, mt.partial(
      compose.Composed, parts=(functools.partial(prompt_tuning.SoftPrompt, length=3,
                                                 initializer=initializers.sampled_vocab(100)),
                               ia3.IA3), names=("prompt", "ia3")))
