"""The method plug-in interface: registry, gin files, folding dispatch,
auxiliary losses, empty hooks, parameter checks and the README table."""
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax import gin_utils
from ptuning_jax import hooks as hooks_lib
from ptuning_jax import methods
from ptuning_jax.models import losses
from ptuning_jax.models import seq2seq
from ptuning_jax.models import task_model
from ptuning_jax.training import optimizers
from ptuning_jax.methods import initializers
from ptuning_jax.backbones import t5
from ptuning_jax.methods import baselines
from ptuning_jax.methods import dept
from ptuning_jax.methods import ia3
from ptuning_jax.methods import low_rank
from ptuning_jax.methods import multitask
from ptuning_jax.methods import prefix_tuning
from ptuning_jax.methods import residual

GIN_BINDINGS = {"multitask": ["NUM_TASKS = 3"], "dept": ["TRAIN_STEPS = 10"],
                "xprompt": ["XPROMPT_PIECES = 4"]}  # k <= d_model 12


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_gin_file_builds_the_registered_method(name, gin_imports):
  info = methods.get(name)
  assert os.path.exists(os.path.join(gin_utils.REPO_ROOT, info.gin_file))
  gin_imports(info.gin_file)
  gin_utils.parse([info.gin_file], GIN_BINDINGS.get(name, []))
  try:
    factory = gin.query_parameter("%METHOD").scoped_configurable_fn
    method = factory(spec=mt.spec())
  finally:
    gin.clear_config()
  assert type(method) is info.cls
  count = methods.count_params(method, mt.context(mt.random_params(mt.config())))
  if issubclass(info.cls, baselines.NoMethod):  # the baselines train no method params
    assert count == 0
  else:
    assert count > 0


def test_dept_gin_binds_two_learning_rates():
  gin_utils.parse([methods.get("dept").gin_file], ["TRAIN_STEPS = 10"])
  try:
    config = gin.get_configurable(optimizers.OptimizerConfig)()
  finally:
    gin.clear_config()
  assert (config.name, config.learning_rate, config.total_steps) == ("adamw", 0.3, 10)
  (group,) = config.param_groups
  assert (group.name, group.learning_rate) == ("low_rank", 1e-4)
  trainables = {"prompt": 0, "low_rank_a": 0, "low_rank_b": 0}
  assert optimizers.group_labels(trainables, config.param_groups) == {
      "prompt": "default", "low_rank_a": "low_rank", "low_rank_b": "low_rank"}


def test_registry_and_fold_dispatch():
  cfg = mt.config()
  with pytest.raises(ValueError, match="Unknown method 'nope'"):
    methods.get("nope")
  with pytest.raises(ValueError, match="already registered"):
    methods.register("ia3", ia3.IA3, "gin/methods/ia3.gin")
  params = {"x": np.ones(2)}
  method = ia3.IA3(mt.spec(cfg))
  assert methods.fold(method, params) == (method, params)  # no reparameterisation
  with pytest.raises(ValueError, match="_Sow is not a registered method"):
    methods.fold(_Sow(), params)


class _Sow(nn.Module):
  """Empty hooks and an auxiliary loss 0.5 * sum(w^2)."""
  spec: object = None

  @nn.compact
  def __call__(self, batch_size, context=initializers.InitContext(), deterministic=True,
               batch=None):
    w = self.param("w", nn.initializers.constant(3.0), (2,))
    self.sow(task_model.AUX_LOSSES, "l2", 0.5 * jnp.sum(w ** 2))
    return hooks_lib.Hooks()


def test_aux_loss_and_empty_hooks_give_the_plain_backbone():
  cfg = mt.config()
  module, params = mt.frozen(cfg)
  batch = mt.make_batch(cfg.vocab_size)
  model = seq2seq.Seq2SeqModel(module, _Sow())
  trainables = nn.meta.unbox(model.init_trainables(jax.random.key(0), mt.context(params)))
  (objective, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
      trainables, params, batch)
  logits = module.apply({"params": params}, batch["encoder_input_tokens"],
                        batch["decoder_input_tokens"])  # no hooks at all
  total, weight, _ = losses.cross_entropy(logits, batch["decoder_target_tokens"],
                                         batch["decoder_loss_weights"])
  np.testing.assert_array_equal(metrics["loss"], total / weight)  # bit for bit
  np.testing.assert_allclose(metrics["aux_loss"], 9.0)
  np.testing.assert_allclose(objective, metrics["loss"] + 9.0, rtol=1e-6)
  np.testing.assert_allclose(grads["method"]["w"], [3.0, 3.0])  # d(0.5 w^2)/dw


def test_prompt_param_checks_the_initialiser_shape():
  cfg = mt.config()
  bad = multitask.MultiTaskPrompt(mt.spec(cfg), num_tasks=2, length=2,
                                  shared_initializer=lambda rng, shape, ctx: jnp.zeros(3))
  with pytest.raises(ValueError, match=r"'shared_prompt' returned shape \(3,\)"):
    methods.count_params(bad)


def test_parameter_table_uses_the_formulas():
  base = mt.spec(t5.get_config("base"))
  h = base.embed_dim
  expected = {
      "prompt_tuning": [100 * h],
      "prefix_tuning": [prefix_tuning.num_params(base, 100),
                        prefix_tuning.num_params(base, 100, base.attention_sites),
                        prefix_tuning.num_params(base, 100, projection_hidden=512)],
      "dept": [dept.num_params(h, 60, 30, 256)],
      "low_rank": [low_rank.num_params(h, 100, 10)],
      "residual": [residual.num_params(h, 100, 400)],
      "ia3": [ia3.num_params(base)],
      "multitask": [multitask.num_params(h, 6, 100), multitask.num_params(h, 6, 50, 50)],
  }
  counts = {}
  for row in methods.PAPER_SETTINGS:
    counts.setdefault(row.method, []).append(row.count(base))
  assert counts == expected
  assert counts["dept"] == counts["prompt_tuning"] == [76_800]
  table = methods.parameter_table(base)
  assert "| dept | m=60, r=30, s=256" in table and "| 76,800 |" in table
  assert len(table.splitlines()) == 2 + len(methods.PAPER_SETTINGS)
