"""Every registered method on every registered backbone family.

One cell per (method in `methods.REGISTRY`) x (family in
`backbones.registry.REGISTRY`), each on a tiny odd backbone with random
frozen weights and its task model from `models.build`:

  1. the method is built from the backbone's hook spec alone and inits;
  2. the loss is finite;
  3. `jax.grad` w.r.t. the trainables is finite and non-zero in every
     trainable part ("method", "head", "backbone"), and the parts are exactly
     those the task model should train;
  4. `methods.fold` gives the identical loss (bit for bit);
  5. one jitted `trainer.Trainer` step on a (2, 4) mesh equals the same
     step unsharded (the eager gradients above, applied) within 1e-5, and
     leaves the frozen parameters bit-identical.

How each method is set up lives in ONE table, `METHOD_SETTINGS` (method
name -> kwargs from the spec), and each backbone's case in `BACKBONES`
(family name -> case factory): a new method or backbone is a row, not new
test code, and a registered one without a row fails
`test_the_tables_cover_every_registered_method_and_backbone`. Where a
backbone cannot host a setting, the row adapts to the spec (no decoder-side
prompts on an encoder-only backbone; multi-task methods use K = 1 because
the matrix's data are single-task, each example's `task_index` 0), and
`test_a_decoder_side_prompt_needs_a_decoder_stack` asserts the unadapted
setting fails clearly.

Compilation dominates on a small CPU machine, so the checks of a cell run
eagerly (primitives compiled once, reused by every cell) except the one
jitted sharded train step. The step uses plain SGD: an update proportional
to the gradient keeps the sharded == unsharded comparison well conditioned
(Adafactor and Adam normalise each gradient, so float32 reduction-order
noise in tiny components becomes a full-size update difference).

Dimension letters: B batch, T input length, S target length.
"""
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

import method_testing as mt
from ptuning_jax import backbones
from ptuning_jax import hooks as hooks_lib
from ptuning_jax import methods
from ptuning_jax import models
from ptuning_jax.backbones import bert
from ptuning_jax.backbones import registry
from ptuning_jax.methods import ia3
from ptuning_jax.methods import initializers
from ptuning_jax.methods import mpt
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.methods import residual
from ptuning_jax.training import partitioning
from ptuning_jax.training import trainer as trainer_lib

B = 8
LEARNING_RATE = 0.5
# Every input prompt has P = 4 rows (and decoder prompts Pd = 2): cells then
# share their sequence shapes, so the eager checks reuse compiled primitives.
P, PD = 4, 2
# Longest input T of any case (DePT's s must cover it).
MAX_INPUT = 32


def _decoder_stack(spec: hooks_lib.HookSpec) -> bool:
  """The spec has a decoder besides its input stack (an encoder-decoder)."""
  return any(s.name == "decoder" and s.name != spec.input_stack for s in spec.stacks)


def _decoder_length(spec: hooks_lib.HookSpec, length: int) -> int:
  """A decoder-side prompt of `length` where the backbone has a decoder."""
  return length if _decoder_stack(spec) else 0


# ------------------------- the method table (rows) ---------------------------

# Method name -> its construction kwargs, given the backbone's hook spec.
METHOD_SETTINGS: dict[str, Callable[[hooks_lib.HookSpec], dict]] = {
    "prompt_tuning": lambda spec: dict(
        length=P, initializer=initializers.normal(),
        decoder_length=_decoder_length(spec, PD)),
    "prefix_tuning": lambda spec: dict(  # every site, MLP-reparameterised (folds)
        length=P, sites=spec.attention_sites, projection_hidden=3),
    "dept": lambda spec: dict(length=P, rank=2, max_length=MAX_INPUT,
                              initializer=initializers.normal()),
    "low_rank": lambda spec: dict(length=P, rank=2),
    "residual": lambda spec: dict(length=P, bottleneck=3,
                                  initializer=initializers.normal()),
    "ia3": lambda spec: {},  # every scale site of the spec
    "multitask": lambda spec: dict(  # K = 1: single-task data (task_index 0)
        num_tasks=1, length=P // 2, task_length=P // 2, combine="concat",
        shared_initializer=initializers.normal(),
        task_initializer=initializers.normal()),
    "mpt": lambda spec: dict(  # K = 1 (folds without a task); unit-scale factors
        num_tasks=1, length=P, rank=2, factor_stddev=1.0,
        decoder_length=_decoder_length(spec, PD)),
    "xprompt": lambda spec: dict(length=P, num_pieces=2, token_mask=(1, 1, 0, 1),
                                 initializer=initializers.normal()),
    "lopt2": lambda spec: dict(length=P, rank=2),
    "compose": lambda spec: dict(
        parts=(functools.partial(residual.ResidualPrompt, length=P, bottleneck=3,
                                 initializer=initializers.normal()), ia3.IA3),
        names=("residual", "ia3")),
    "head_only": lambda spec: {},
    "full_finetune": lambda spec: {},
}


# ------------------------- the backbone table (columns) -----------------------


@dataclasses.dataclass(frozen=True)
class Case:
  """A tiny backbone with random frozen weights, a data object for
  `models.build` and one batch (with `task_index` [B] = 0)."""
  config: Any
  params: Any
  data: Any
  batch: dict


def _t5_case() -> Case:
  """The odd tiny T5 (4 heads of 5, 2 + 3 layers, byte vocabulary: the
  model axis of 4 splits heads, MLP and vocabulary) on the synthetic text
  task."""
  config = mt.sharded_config()
  data = mt.smoke_data()
  batch = dict(next(iter(data.train_iterator())))  # T = 24, S = 4
  batch["task_index"] = np.zeros(B, np.int32)
  return Case(config, mt.random_params(config), data, batch)


@dataclasses.dataclass(frozen=True)
class _ClassificationData:
  """What `models.build` reads of classification data."""
  num_classes: int
  task_kind: str = "classification"
  vocab: Any = None


def _bert_case() -> Case:
  """An odd tiny BERT (4 heads of 5, F = 28, 3 token types, ReLU) on
  three-class classification rows of different lengths."""
  config = bert.BertConfig(vocab_size=92, hidden_size=20, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=28,
                           max_position_embeddings=MAX_INPUT, type_vocab_size=3,
                           hidden_act="relu")
  rng = np.random.default_rng(0)
  length = 9
  ids = rng.integers(2, config.vocab_size, (B, length)).astype(np.int32)
  mask = (np.arange(length)[None] < rng.integers(4, length + 1, (B, 1))).astype(np.int32)
  batch = {"input_ids": ids * mask, "attention_mask": mask,
           "token_type_ids": (rng.integers(0, 3, (B, length)) * mask).astype(np.int32),
           "label": rng.integers(0, 3, B).astype(np.int32),
           "task_index": np.zeros(B, np.int32)}
  return Case(config, _random_params(config), _ClassificationData(num_classes=3), batch)


def _random_params(config: Any, seed: int = 1) -> Any:
  """Random float32 numpy params of any family's module (shapes by
  `eval_shape`; no compiled init): norm scales near 1, the rest N(0, 0.2)."""
  family = registry.for_config(config)
  module = family.module(config)
  shapes = nn.meta.unbox(jax.eval_shape(
      lambda: module.init(jax.random.key(0), *family.init_args(config))["params"]))
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    noise = rng.standard_normal(x.shape)
    if jax.tree_util.keystr(path).endswith("['scale']"):
      return (1.0 + 0.1 * noise).astype(np.float32)
    return (0.2 * noise).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


# Family name -> its case.
BACKBONES: dict[str, Callable[[], Case]] = {"t5": _t5_case, "bert": _bert_case}


@functools.lru_cache(maxsize=None)
def _case(family: str) -> Case:
  return BACKBONES[family]()


# ------------------------------- the matrix -----------------------------------


def test_the_tables_cover_every_registered_method_and_backbone():
  assert sorted(METHOD_SETTINGS) == sorted(methods.REGISTRY)
  assert sorted(BACKBONES) == sorted(registry.REGISTRY)


def test_a_decoder_side_prompt_needs_a_decoder_stack():
  """What the table adapts: a decoder-side prompt on the encoder-only BERT is
  an error naming the missing stack, never silently dropped."""
  spec = registry.get("bert").hook_spec(_case("bert").config)
  assert not _decoder_stack(spec)
  for method in (prompt_tuning.SoftPrompt(spec, length=2, decoder_length=2,
                                          initializer=initializers.normal()),
                 mpt.MPT(spec, length=2, decoder_length=2)):
    with pytest.raises(ValueError, match="backbone has no stack 'decoder'"):
      methods.count_params(method)


def _expected_parts(model, method_shapes) -> set:
  """The trainable parts that must hold parameters (`task_model`)."""
  parts = {"method"} if jax.tree_util.tree_leaves(method_shapes) else set()
  if model.init_head(jax.random.key(0)) is not None:
    parts.add("head")
  if model.train_backbone:
    parts.add("backbone")
  return parts


def _check_gradients(model, method_shapes, trainables, frozen, batch):
  """Finite loss; finite gradients, non-zero in every trainable part.
  Returns (loss metrics, gradients)."""
  (objective, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
      trainables, frozen, batch)
  assert np.isfinite(objective) and np.isfinite(metrics["loss"]), metrics
  parts = {p for p, tree in trainables.items() if jax.tree_util.tree_leaves(tree)}
  assert parts == _expected_parts(model, method_shapes)
  for part in parts:
    leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(grads[part])]
    assert all(np.isfinite(g).all() for g in leaves), part
    assert any(np.abs(g).max() > 0 for g in leaves), f"no gradient reaches {part!r}"
  return metrics, grads


def _check_fold(name, model, method, trainables, frozen, batch):
  """`methods.fold` gives the identical loss (identity without a fold)."""
  folded, folded_params = methods.fold(method, trainables["method"])
  if methods.get(name).fold is None:
    assert folded is method and folded_params is trainables["method"]
    return
  before = model.loss_fn(trainables, frozen, batch)[0]
  after = dataclasses.replace(model, method=folded).loss_fn(
      dict(trainables, method=folded_params), frozen, batch)[0]
  np.testing.assert_array_equal(after, before)


def _leaves(tree) -> list:
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _check_sharded_step(model, case, boxed, grads, mesh, rules, shardings, metrics):
  """One jitted (2, 4) step == the eager unsharded step (the gradients
  `grads` applied) within 1e-5; the frozen parameters stay bit-identical."""
  tx = optax.sgd(LEARNING_RATE)
  state = trainer_lib.create_train_state(boxed, tx, seed=0)
  reference = jax.device_get(trainer_lib.apply_gradients(state, grads, tx).params)
  for part, tree in state.params.items():  # the comparison is not vacuous
    moved = [np.any(a != b) for a, b in zip(_leaves(reference[part]), _leaves(tree))]
    assert any(moved) or not moved, f"the step leaves {part!r} unchanged"
  placed = jax.device_put(case.params, shardings)
  trainer = trainer_lib.Trainer(model, tx, mesh, rules, model.frozen_params(shardings),
                                deterministic=True)
  host = jax.tree_util.tree_map(np.asarray, state)  # the step donates what it gets
  stepped, step_metrics = trainer.train_step(
      trainer.place_state(host), model.frozen_params(placed),
      trainer.place_batch(case.batch))
  np.testing.assert_allclose(step_metrics["loss"], metrics["loss"], atol=1e-5, rtol=0)
  got = jax.device_get(stepped.params)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(reference)
  for (path, want), have in zip(jax.tree_util.tree_leaves_with_path(reference),
                                _leaves(got)):
    np.testing.assert_allclose(have, want, atol=1e-5, rtol=0,
                               err_msg=jax.tree_util.keystr(path))
  for (path, value), original in zip(jax.tree_util.tree_leaves_with_path(
      jax.device_get(placed)), jax.tree_util.tree_leaves(case.params)):
    np.testing.assert_array_equal(value, original, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("family", sorted(registry.REGISTRY))
@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_method_on_backbone(name, family):
  assert name in METHOD_SETTINGS, f"add a METHOD_SETTINGS row for method {name!r}"
  assert family in BACKBONES, f"add a BACKBONES case for backbone family {family!r}"
  case = _case(family)
  info, bb_family = methods.get(name), registry.get(family)
  module = bb_family.module(case.config)
  mesh = partitioning.make_mesh(2, 4)
  rules = partitioning.standard_logical_axis_rules()
  shardings = backbones.frozen_shardings(bb_family, module, mesh, rules)
  backbone = backbones.Backbone(bb_family, module, case.params, shardings)
  spec = backbone.spec

  # 1. Built from the spec alone; inits.
  method = info.cls(spec, **METHOD_SETTINGS[name](spec))
  assert method.spec is spec
  model = models.build(backbone, method, case.data)
  context = initializers.InitContext(embedding=np.asarray(backbone.embedding),
                                     vocab=getattr(case.data, "vocab", None))
  boxed = model.init_trainables(jax.random.key(0), context, case.params)
  trainables = nn.meta.unbox(boxed)
  shapes = jax.tree_util.tree_map(
      np.shape, nn.meta.unbox(methods.abstract_params(method, context)))
  assert jax.tree_util.tree_map(np.shape, trainables["method"]) == shapes
  frozen = model.frozen_params(case.params)  # unsharded, on one device

  # 2., 3. Finite loss; gradients in (exactly) the trainable parts.
  metrics, grads = _check_gradients(model, shapes, trainables, frozen, case.batch)
  # 4. Folding.
  _check_fold(name, model, method, trainables, frozen, case.batch)
  # 5. Sharded == unsharded; frozen untouched.
  _check_sharded_step(model, case, boxed, grads, mesh, rules, shardings, metrics)
