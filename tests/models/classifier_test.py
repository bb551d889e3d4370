"""classifier.ClassifierModel: losses, multiple choice, what trains and what
stays frozen, with each prompt method on a tiny random BERT.

Dimension letters: B batch, C classes / choices, T length, H hidden.
"""
import functools

import jax
import numpy as np
import pytest

from ptuning_jax.backbones import bert
from ptuning_jax.methods import baselines
from ptuning_jax.models import classifier
from ptuning_jax.models import heads
from ptuning_jax.training import optimizers
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.training import trainer
from ptuning_jax.methods import dept
from ptuning_jax.methods import ia3
from ptuning_jax.methods import low_rank
from ptuning_jax.methods import prefix_tuning

CONFIG = bert.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=48, hidden_dropout_rate=0.1,
                         attention_dropout_rate=0.1)
B, T = 4, 10


@pytest.fixture(scope="module")
def params():
  return bert.init_params(CONFIG, seed=1)


def _batch(seed=0, choices=None, regression=False, num_classes=2):
  rng = np.random.default_rng(seed)
  shape = (B, T) if choices is None else (B, choices, T)
  ids = rng.integers(5, CONFIG.vocab_size, shape).astype(np.int32)
  lengths = rng.integers(3, T + 1, shape[:-1])
  mask = (np.arange(T) < lengths[..., None]).astype(np.int32)
  types = (np.arange(T) >= lengths[..., None] // 2).astype(np.int32) * mask
  if regression:
    label = rng.uniform(0, 5, B).astype(np.float32)
  else:
    label = rng.integers(0, choices or num_classes, B).astype(np.int32)
  return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types,
          "label": label}


SPEC = bert.hook_spec(CONFIG)


def _model(method=None, kind="classification", num_classes=2, train_backbone=False,
           **head):
  """No method: the head-only probe; train_backbone: full fine-tuning."""
  if method is None:
    method = (baselines.FullFinetune if train_backbone else baselines.NoMethod)(SPEC)
  head = heads.ClassificationHead(num_classes=num_classes, **head)
  return classifier.ClassifierModel(bert.BertEncoder(CONFIG), method, head=head,
                                    kind=kind)


def _context(params):
  return initializers.InitContext(embedding=bert.word_embeddings(params))


METHODS = {
    "prompt_tuning": lambda: prompt_tuning.SoftPrompt(
        SPEC, length=3, initializer=initializers.normal(0.1)),
    "prefix_tuning": lambda: prefix_tuning.PrefixTuning(SPEC, length=3),
    "dept": lambda: dept.DePT(SPEC, length=2, rank=2, max_length=T,
                              initializer=initializers.normal(0.1)),
    "low_rank": lambda: low_rank.LowRankPrompt(SPEC, length=4, rank=2,
                                               initializer=initializers.normal(0.1)),
    "ia3": lambda: ia3.IA3(SPEC),
}


def _tree_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _tree_changed(a, b):
  """Every leaf of `a` differs from its counterpart in `b`."""
  return all(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _train(model, params, batch, steps=2, lr=1e-2):
  """`steps` jitted, donated `trainer.train_step`s; returns (initial, final)
  trainables (initial as a host copy) and the frozen tree used."""
  trainables = model.init_trainables(jax.random.PRNGKey(0), _context(params), params)
  tx = optimizers.build_optimizer(optimizers.OptimizerConfig(name="adamw",
                                                             learning_rate=lr))
  state = trainer.create_train_state(trainables, tx, seed=0)
  initial = jax.device_get(state.params)
  frozen = model.frozen_params(params)
  step = jax.jit(functools.partial(trainer.train_step, model=model, tx=tx),
                 donate_argnums=(0,))
  for _ in range(steps):
    state, metrics = step(state, frozen, batch)
    assert np.isfinite(float(metrics["loss"]))
  return initial, state.params, frozen


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_and_head_train_backbone_frozen(params, name):
  snapshot = jax.device_get(params)
  model = _model(METHODS[name]())
  initial, final, frozen = _train(model, params, _batch())
  assert set(final) == {"method", "head"}
  assert frozen is params
  assert _tree_changed(final["head"], initial["head"])
  # IA3's vectors and the prompts all receive gradient through the encoder.
  assert _tree_changed(final["method"], initial["method"])
  assert _tree_equal(params, snapshot)


def test_head_only_trains_the_head_alone(params):
  snapshot = jax.device_get(params)
  initial, final, _ = _train(_model(), params, _batch())
  assert set(final) == {"method", "head"} and final["method"] == {}
  assert _tree_changed(final["head"], initial["head"])
  assert _tree_equal(params, snapshot)


def test_full_finetune_trains_a_copy_of_the_backbone(params):
  snapshot = jax.device_get(params)
  model = _model(train_backbone=True)
  initial, final, frozen = _train(model, params, _batch())
  assert frozen == {} and set(final) == {"method", "head", "backbone"}
  assert _tree_equal(initial["backbone"], snapshot)
  changed = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
      jax.tree_util.tree_leaves(final["backbone"]), jax.tree_util.tree_leaves(snapshot))]
  assert sum(changed) > len(changed) // 2
  # The caller's parameters survive the donated train state.
  assert _tree_equal(params, snapshot)


def test_ia3_at_init_is_the_plain_model(params):
  batch = _batch()
  with_ia3 = _model(METHODS["ia3"]())
  plain = _model()
  trainables = with_ia3.init_trainables(jax.random.PRNGKey(3), _context(params))
  expected = plain.predict({"method": {}, "head": trainables["head"]}, params, batch)
  np.testing.assert_allclose(with_ia3.predict(trainables, params, batch), expected,
                             atol=1e-5, rtol=1e-5)


def test_classification_loss_is_masked_cross_entropy(params):
  model = _model(num_classes=3, pooling="cls")
  trainables = model.init_trainables(jax.random.PRNGKey(0))
  batch = _batch(num_classes=3)
  logits = np.asarray(model.predict(trainables, params, batch), np.float64)  # [B, C]
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  per_example = -log_probs[np.arange(B), batch["label"]]
  keep = np.array([1, 0, 1, 1], np.float32)
  loss, metrics = model.loss_fn(trainables, params, dict(batch, example_mask=keep))
  np.testing.assert_allclose(loss, per_example[keep > 0].mean(), rtol=1e-5)
  correct = (logits.argmax(-1) == batch["label"])[keep > 0].mean()
  np.testing.assert_allclose(metrics["token_accuracy"], correct, rtol=1e-6)
  assert float(metrics["target_tokens"]) == 3.0


def test_regression_loss_is_mse(params):
  model = _model(kind="regression", num_classes=1, pooling="mean")
  trainables = model.init_trainables(jax.random.PRNGKey(0))
  batch = _batch(regression=True)
  scores = np.asarray(model.predict(trainables, params, batch))
  assert scores.shape == (B,)
  loss, metrics = model.loss_fn(trainables, params, batch)
  expected = np.mean((scores - batch["label"]) ** 2)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["mse"], expected, rtol=1e-5)


@pytest.mark.parametrize("method", [None, "prompt_tuning"])
def test_multiple_choice_scores_each_choice_separately(params, method):
  method = None if method is None else METHODS[method]()
  mc = _model(method, kind="multiple_choice", num_classes=1)
  single = _model(method, kind="regression", num_classes=1)
  trainables = mc.init_trainables(jax.random.PRNGKey(0), _context(params))
  batch = _batch(choices=3)
  logits = np.asarray(mc.predict(trainables, params, batch))  # [B, C]
  assert logits.shape == (B, 3)
  for c in range(3):
    one = {k: batch[k][:, c] for k in classifier.INPUT_KEYS}
    np.testing.assert_allclose(logits[:, c], single.predict(trainables, params, one),
                               atol=1e-5, rtol=1e-5)
  loss, _ = mc.loss_fn(trainables, params, batch)
  log_probs = jax.nn.log_softmax(logits, -1)
  np.testing.assert_allclose(loss, -np.mean(log_probs[np.arange(B), batch["label"]]),
                             rtol=1e-5)


def test_pooler_head_uses_the_frozen_pooler(params):
  model = _model(use_pooler=True, pooling="cls")
  trainables = model.init_trainables(jax.random.PRNGKey(0))
  batch = _batch()
  hidden = bert.BertEncoder(CONFIG).apply({"params": params}, batch["input_ids"],
                                          batch["attention_mask"],
                                          batch["token_type_ids"])
  pooled = np.tanh(hidden[:, 0] @ params["pooler"]["kernel"] + params["pooler"]["bias"])
  dense = trainables["head"]["dense"]
  expected = pooled @ dense["kernel"].unbox() + dense["bias"].unbox()
  np.testing.assert_allclose(model.predict(trainables, params, batch), expected,
                             atol=1e-5, rtol=1e-5)


def test_training_learns_a_separable_task(params):
  """Head-only on a task decided by the first token reaches high accuracy."""
  batch = _batch(seed=5)
  batch["input_ids"][:, 1] = np.where(batch["label"] == 1, 7, 9)
  model = _model(dropout_rate=0.0, pooling="mean")
  _, final, _ = _train(model, params, batch, steps=60, lr=5e-2)
  _, metrics = model.loss_fn(final, params, batch)
  assert float(metrics["token_accuracy"]) == 1.0


def test_bad_configurations_are_named():
  with pytest.raises(ValueError, match="kind='ranking'"):
    _model(kind="ranking")
  with pytest.raises(ValueError, match="num_classes=1, got 2"):
    _model(kind="regression", num_classes=2)
  with pytest.raises(ValueError, match="needs a head"):
    classifier.ClassifierModel(bert.BertEncoder(CONFIG), baselines.NoMethod(SPEC))
  with pytest.raises(ValueError, match="needs backbone_params"):
    _model(train_backbone=True).init_trainables(jax.random.PRNGKey(0))
  model = _model(kind="multiple_choice", num_classes=1)
  with pytest.raises(ValueError, match=r"must be \[B, C, T\]"):
    model.predict(model.init_trainables(jax.random.PRNGKey(0)), {}, _batch())
