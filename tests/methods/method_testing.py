"""Shared helpers of the method tests (imported by tests/methods/*_test.py).

Compilation dominates the cost of these tests on a small CPU machine, so the
frozen backbones are random numpy arrays (no jitted init) and each method's
training check compiles exactly two train steps: one inside `run.train`
on a (2, 4) mesh, one for the unsharded (1, 1) reference.

Dimension letters: B batch, T input length, S target length.
"""
import atexit
import functools
import os
import shutil
import tempfile

import flax.linen as nn
import jax
import numpy as np

from ptuning_jax import backbones
from ptuning_jax import hooks as hooks_lib
from ptuning_jax.training import checkpoints
from ptuning_jax.backbones.hf import t5 as hf_t5
from ptuning_jax import methods
from ptuning_jax.models import seq2seq
from ptuning_jax.training import optimizers
from ptuning_jax.training import partitioning
from ptuning_jax.methods import initializers
from ptuning_jax.data import synthetic
from ptuning_jax.backbones import t5
from ptuning_jax.data import text_data
from ptuning_jax import testing
from ptuning_jax.training import run as run_lib
from ptuning_jax.training import trainer as trainer_lib
from ptuning_jax.data import vocab as vocab_lib

B, T, S = 8, 7, 5
partial = functools.partial


def config(**overrides) -> t5.T5Config:
  """The odd tiny config (3 heads of 5, 2 + 3 layers)."""
  return testing.tiny_config(**overrides)


_CONFIGS: dict = {}


def spec(cfg: t5.T5Config = None) -> hooks_lib.HookSpec:
  """The hook spec of a T5 config (default `config()`); `config_of` maps it
  back."""
  cfg = cfg if cfg is not None else config()
  out = t5.hook_spec(cfg)
  _CONFIGS[out] = cfg
  return out


def config_of(hook_spec: hooks_lib.HookSpec) -> t5.T5Config:
  return _CONFIGS[hook_spec]


def sharded_config() -> t5.T5Config:
  """Tiny, byte vocabulary, with 4 heads and a vocabulary divisible by 4, so
  a model axis of 4 really splits heads, MLP and vocabulary."""
  return testing.tiny_config(vocab_size=260, num_heads=4)


def random_params(cfg: t5.T5Config, seed: int = 1):
  """Random float32 numpy params of `t5.T5(cfg)` (shapes by `eval_shape`).

  Kernels are N(0, 1 / fan_in) (fan_in = the leading dim, N D for attention
  outputs), embeddings N(0, 1), position tables N(0, 0.25), norms ones.
  """
  dummy = np.ones((1, 1), np.int32)
  shapes = nn.meta.unbox(jax.eval_shape(
      lambda: t5.T5(cfg).init(jax.random.key(0), dummy, dummy)["params"]))
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name.endswith("scale"):
      return np.ones(x.shape, np.float32)
    if "rel_embedding" in name:
      std = 0.5
    elif "embedding" in name:
      std = 1.0
    else:
      fan_in = x.shape[0] * (x.shape[1] if "/out/" in name else 1)
      std = fan_in ** -0.5
    return (std * rng.standard_normal(x.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def frozen(cfg: t5.T5Config, seed: int = 1):
  """(module, params) of a random backbone."""
  return t5.T5(cfg), random_params(cfg, seed)


@functools.lru_cache(maxsize=None)
def backbone_dir(seed: int = 3) -> str:
  """A Hugging Face layout checkpoint of a random `sharded_config()` T5
  (written once per process; loading it compiles nothing)."""
  path = tempfile.mkdtemp(prefix="methods_backbone_")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  cfg = sharded_config()
  hf_t5.save_checkpoint(random_params(cfg, seed), cfg, path)
  return path


def make_batch(vocab_size: int, seed: int = 0, batch: int = B, length: int = T,
               target_length: int = S) -> dict:
  """Random ids with padding at the end of inputs and some targets."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab_size, (batch, length)).astype(np.int32)
  enc[:, -2:] = 0
  tgt = rng.integers(2, vocab_size, (batch, target_length)).astype(np.int32)
  tgt[::2, -1] = 0
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": (tgt > 0).astype(np.float32)}


def context(params, vocab=None) -> initializers.InitContext:
  return initializers.InitContext(embedding=np.asarray(params["token_embedder"]["embedding"]),
                             vocab=vocab or vocab_lib.ByteVocab())


def init(method, params, seed: int = 0):
  """Unboxed numpy trainables of `method` (its own subtree) for the backbone
  `params`."""
  model = seq2seq.Seq2SeqModel(None, method)
  boxed = model.init_trainables(jax.random.key(seed), context(params))
  return jax.tree_util.tree_map(np.asarray, nn.meta.unbox(boxed))["method"]


def loss(module, method, trainables, params, batch, **kw):
  """(objective, metrics) of `Seq2SeqModel.loss_fn` (eager) for the method's
  parameters `trainables`."""
  return seq2seq.Seq2SeqModel(module, method).loss_fn(
      {"method": trainables}, params, batch, **kw)


def check_fold(method, trainables=None, rtol: float = 0.0):
  """Folds `method` (on `config()`); the loss before and after must agree
  (bit for bit by default). Returns (folded method, folded params)."""
  cfg = config_of(method.spec)
  module, params = frozen(cfg)
  batch = make_batch(cfg.vocab_size)
  trainables = init(method, params) if trainables is None else trainables
  folded, folded_params = methods.fold(method, trainables)
  before, _ = loss(module, method, trainables, params, batch)
  after, _ = loss(module, folded, folded_params, params, batch)
  if rtol:
    np.testing.assert_allclose(after, before, rtol=rtol)
  else:
    np.testing.assert_array_equal(after, before)
  return folded, folded_params


# ------------------------------ data ----------------------------------------

FEATURES = {"inputs": 24, "targets": 4}


def smoke_data(seed: int = 0) -> text_data.TextTaskData:
  """The synthetic held-out task (byte vocabulary), 32 training examples."""
  task = synthetic.HELDOUT_TASK
  splits = {"train": synthetic.train_examples(task, 32, seed),
            "validation": synthetic.eval_examples(task, 8, seed)}
  return text_data.TextTaskData(splits, vocab_lib.ByteVocab(), FEATURES, batch_size=8,
                                seed=seed, label_strings=synthetic.label_strings(task))


# ------------------------------ training ------------------------------------


def _reference_steps(method_factory, data, optimizer, steps, extra_steps, seed):
  """The unsharded (1, 1) run of what `run.train` does, plus `extra_steps`
  more steps on one fixed batch. Returns (params after `steps`, fixed-batch
  losses)."""
  ckpt = backbone_dir()
  cfg = hf_t5.load_config(ckpt)
  mesh = partitioning.make_mesh(1, 1, devices=jax.devices()[:1])
  rules = partitioning.standard_logical_axis_rules()
  module = t5.T5(cfg)
  shardings = backbones.frozen_shardings(backbones.T5, module, mesh, rules)
  frozen_params = hf_t5.load_params(ckpt, cfg, mesh=mesh, rules=rules)
  model = seq2seq.Seq2SeqModel(module, method_factory(spec=t5.hook_spec(cfg)))
  ctx = initializers.InitContext(
      embedding=np.asarray(frozen_params["token_embedder"]["embedding"]),
      vocab=data.vocab)
  tx = optimizers.build_optimizer(optimizer)
  state = trainer_lib.create_train_state(
      model.init_trainables(jax.random.key(seed), ctx), tx, seed)
  trainer = trainer_lib.Trainer(model, tx, mesh, rules, shardings)
  state = trainer.place_state(state)
  batches = data.train_iterator()
  for _ in range(steps):
    state, _ = trainer.train_step(state, frozen_params, trainer.place_batch(next(batches)))
  after = jax.device_get(state.params)
  fixed = trainer.place_batch(next(batches))
  losses = []
  for _ in range(extra_steps):
    state, metrics = trainer.train_step(state, frozen_params, fixed)
    losses.append(float(metrics["loss"]))
  return after, losses


def check_training(tmp_path, method_factory, data=None, steps=2, extra_steps=4,
                   optimizer=optimizers.OptimizerConfig(), atol=1e-5) -> dict:
  """The per-method training check:

  1. a `steps`-step `run.train` run on a (2, 4) mesh (smoke run through the
     CLI's code path: backbone checkpoint, sharding, checkpoints, .npy export);
  2. the same steps unsharded on one device give the same trainables;
  3. on a fixed batch, further unsharded steps lower the loss.
  Returns run.train's result.
  """
  data = data or smoke_data()
  seed = 42
  result = run_lib.train(
      model_dir=str(tmp_path), backbone=backbones.BackboneSpec(checkpoint_dir=backbone_dir()),
      method=method_factory, data=data, optimizer=optimizer, num_steps=steps,
      log_every=1, progress_bar=False, mesh=run_lib.MeshConfig(data=2, model=4),
      seed=seed)
  assert np.isfinite(result["train/loss"]), result
  assert result["trainable_params"] > 0
  reference, losses = _reference_steps(method_factory, data, optimizer, steps,
                                       extra_steps, seed)
  npy_dir = os.path.join(str(tmp_path), "checkpoints", checkpoints.NUMPY_DIR, str(steps))
  exported = {f[:-len(".npy")]: np.load(os.path.join(npy_dir, f))
              for f in os.listdir(npy_dir)}
  expected = {optimizers.path_str(p, "."): np.asarray(x)
              for p, x in jax.tree_util.tree_leaves_with_path(reference["method"])}
  assert sorted(exported) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(exported[name], value, atol=atol, rtol=0, err_msg=name)
  assert losses[-1] < losses[0], losses
  return result


class _TaskIndexBatches:
  """Adds `task_index` [B] = (number of input tokens) mod K to every batch."""

  def __init__(self, inner, num_tasks: int):
    self._inner, self._num_tasks = inner, num_tasks

  def __iter__(self):
    return self

  def __next__(self):
    batch = dict(next(self._inner))
    lengths = (np.asarray(batch["encoder_input_tokens"]) > 0).sum(1)
    batch["task_index"] = (lengths % self._num_tasks).astype(np.int32)
    return batch

  def get_state(self):
    return self._inner.get_state()

  def set_state(self, state):
    self._inner.set_state(state)


class TaskIndexData(text_data.TextTaskData):
  """`smoke_data`'s examples with a `task_index` feature in training batches."""
  num_tasks = 2

  def train_iterator(self):
    return _TaskIndexBatches(super().train_iterator(), self.num_tasks)


def task_index_data(seed: int = 0) -> TaskIndexData:
  data = smoke_data(seed)
  return TaskIndexData(data._splits, data.vocab, data.feature_lengths,
                       data.batch_size, seed, label_strings=data.label_strings)
