"""`ptuning-jax bench`, `bench_compare`, and the levers the bench measures:
bf16 frozen weights with a float32 prompt and optimizer state, no weight
gradients, rematerialisation, fused attention, donation, no host
synchronisation in the timed loop, the cross-entropy without a one-hot.

Dimension letters: B batch, T input length, P prompt length, S target
length, H d_model, N heads, D head dim, Q queries, K keys, V vocabulary.
"""
import ast
import contextlib
import dataclasses
import io
import json
import math
import pathlib
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptuning_jax.projects.bench import bench
from ptuning_jax.projects.bench import compare
from ptuning_jax.projects.bench import flops
from ptuning_jax.backbones import layers
from ptuning_jax.models import losses
from ptuning_jax.models import seq2seq
from ptuning_jax.training import optimizers
from ptuning_jax.training import partitioning
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.backbones import t5
from ptuning_jax import testing
from ptuning_jax.training import trainer as trainer_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
PEFT_SCRIPT = REPO.parent / "shared" / "bench" / "peft_t5_baseline.py"
SHAPES = ["--size", "tiny", "--batch", "4", "--inputs", "8", "--targets", "4",
          "--prompt", "3", "--steps", "2", "--warmup", "2", "--dtype", "fp32",
          "--default_malloc"]
OURS_ONLY = {"model_flops_per_step", "traced_dot_flops_per_step", "model_tflops_per_s",
             "mfu", "peak_rss_gib", "step_s_min", "step_s_max", "remat", "attention",
             "donation_warnings", "state_donated_fraction"}


def _main(argv):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    records = bench.main(argv)
  lines = out.getvalue().strip().splitlines()
  assert len(lines) == len(records) == 1
  assert json.loads(lines[0]) == records[0]
  return records[0]


@pytest.fixture(scope="module")
def default_record():
  return _main(SHAPES + ["--mesh_data", "1"])


@pytest.fixture(scope="module")
def levers_record():
  return _main(SHAPES + ["--mesh_data", "2", "--remat", "full", "--attention",
                         "fused_xla", "--feed", "prefetch", "--microbatches", "2",
                         "--no_donate", "--host_sync"])


# ------------------------------------------------------------------ command --


def test_bench_record_fields_and_values(default_record):
  r = default_record
  assert {"examples_per_s", "tokens_per_s", "peak_mem_gib", "step_s",
          "trainable_params", "frozen_params"} | OURS_ONLY <= set(r)
  assert r["system"] == "ptuning_jax" and r["size"] == "tiny" and r["batch"] == 4
  assert r["trainable_params"] == 3 * 64
  assert r["frozen_params"] == t5.num_params(bench.PEFT_TINY)
  assert r["step_s"] > 0
  assert math.isclose(r["examples_per_s"], 4 / r["step_s"], rel_tol=1e-2)
  assert math.isclose(r["tokens_per_s"], 4 * (8 + 3 + 4) / r["step_s"], rel_tol=1e-2)
  assert r["model_flops_per_step"] == flops.train_step_flops(bench.PEFT_TINY, 4, 8, 4, 3)
  # The real step's matmuls: about 2x forward, not 3x (no weight gradients).
  assert 0.9 < r["traced_dot_flops_per_step"] / r["model_flops_per_step"] < 1.1
  assert r["platform"] == "cpu" and r["mfu"] is None and r["peak_mem_gib"] is None
  assert r["peak_rss_gib"] > 0 and math.isfinite(r["loss"])
  assert r["donation_warnings"] == 0 and r["state_donated_fraction"] > 0.99
  assert r["tune_malloc"] is False  # --default_malloc


@pytest.mark.skipif(not PEFT_SCRIPT.is_file(), reason="no PEFT baseline script beside the repo")
def test_record_has_every_field_of_the_peft_script(default_record):
  tree = ast.parse(PEFT_SCRIPT.read_text())
  keys = set()
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "dumps"
        and node.args and isinstance(node.args[0], ast.Call)):
      keys |= {k.arg for k in node.args[0].keywords}
  assert "examples_per_s" in keys and "peak_mem_gib" in keys
  assert keys - {"torch"} <= set(default_record)


def test_levers_keep_the_training_math(default_record, levers_record):
  r = levers_record
  assert (r["remat"], r["attention"], r["feed"], r["microbatches"]) == (
      "full", "fused_xla", "prefetch", 2)
  assert r["mesh"] == {"data": 2, "model": 1} and r["num_devices"] == 2
  assert r["donate"] is False and r["state_donated_fraction"] == 0.0
  # Remat recomputes layer forwards inside the backward: more traced matmuls
  # (here few: the 32128-entry LM head, not rematerialised, dominates).
  assert r["traced_dot_flops_per_step"] > default_record["traced_dot_flops_per_step"]
  assert r["model_flops_per_step"] == default_record["model_flops_per_step"]
  # Same seed, batch and number of Adafactor steps: same final loss.
  np.testing.assert_allclose(r["loss"], default_record["loss"], rtol=1e-4)


def test_weight_grads_lever_differentiates_the_frozen_weights(default_record):
  # The counterfactual of "no weight gradients": the same step and loss, with
  # every weight's gradient computed too (3 x forward instead of 2 x).
  r = _main(SHAPES + ["--mesh_data", "1", "--weight_grads"])
  assert r["weight_grads"] is True and default_record["weight_grads"] is False
  assert r["model_flops_per_step"] == default_record["model_flops_per_step"]
  assert 1.4 < r["traced_dot_flops_per_step"] / r["model_flops_per_step"] < 1.6
  np.testing.assert_allclose(r["loss"], default_record["loss"], rtol=1e-5)
  # And the compiled program keeps that work (XLA does not drop it).
  compiled = []
  for weight_grads in (False, True):
    config = bench.BenchConfig(size="tiny", batch=4, inputs=8, targets=4, prompt=3,
                               dtype="fp32", mesh_data=1, weight_grads=weight_grads)
    setup = bench.build(config)
    batch = jax.device_put(bench.synthetic_batch(config, config.model_config.vocab_size),
                           setup.batch_sharding)
    cost = setup.step.lower(setup.state, setup.frozen, batch).compile().cost_analysis()
    compiled.append((cost[0] if isinstance(cost, list) else cost)["flops"])
  assert compiled[1] > 1.4 * compiled[0], compiled


def test_lower_only_traces_the_same_step_without_weights(default_record):
  r = _main(SHAPES + ["--mesh_data", "1", "--lower_only"])
  assert r["lowered"] is True and "step_s" not in r and "peak_mem_gib" not in r
  for key in ("frozen_params", "trainable_params", "model_flops_per_step",
              "traced_dot_flops_per_step"):
    assert r[key] == default_record[key], key
  assert r["frozen_weights_gib"] == round(r["frozen_params"] * 4 / 2**30, 3)  # fp32
  assert r["stablehlo_bytes"] > 0
  setup = bench.build(bench.BenchConfig(size="tiny", batch=4, inputs=8, targets=4,
                                        prompt=3, mesh_data=1), abstract=True)
  assert all(isinstance(x, jax.ShapeDtypeStruct)
             for x in jax.tree_util.tree_leaves(setup.frozen))


def test_config_validation_names_the_flag():
  for kwargs, flag in [(dict(warmup=0), "--warmup"), (dict(batch=6, microbatches=4), "--batch"),
                       (dict(remat="some"), "--remat"), (dict(attention="flash"), "--attention"),
                       (dict(size="huge"), "huge"), (dict(prompt=-1), "--prompt"),
                       (dict(batch=4, microbatches=2, weight_grads=True), "--weight_grads")]:
    with pytest.raises(ValueError, match=flag):
      bench.BenchConfig(**kwargs)
  with pytest.raises(ValueError, match="needs 16 devices"):
    bench.build(bench.BenchConfig(size="tiny", mesh_data=16))


def test_sizes_and_peak_table():
  assert bench.size_config("tiny") == bench.PEFT_TINY
  assert (bench.PEFT_TINY.d_model, bench.PEFT_TINY.d_ff, bench.PEFT_TINY.num_heads,
          bench.PEFT_TINY.d_kv, bench.PEFT_TINY.num_encoder_layers,
          bench.PEFT_TINY.num_decoder_layers) == (64, 128, 4, 16, 2, 2)
  assert bench.size_config("xl") == t5.get_config("xl")
  assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert bench.peak_flops("NVIDIA H100 PCIe") == 756e12
  assert bench.peak_flops("NVIDIA H200") == 989e12
  assert bench.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
  assert bench.peak_flops("TPU v5 lite") == 197e12
  assert bench.peak_flops("cpu") is None


def test_sizes_run_in_subprocesses_with_one_size_each():
  argv = ["--sizes", "base,large", "--batch", "4", "--size=xl", "--dtype", "fp32"]
  assert bench._child_argv(argv, "large") == ["--batch", "4", "--dtype", "fp32",
                                              "--size", "large"]
  args = bench.parser().parse_args(argv)
  assert [c.size for c in bench.configs_from_args(args)] == ["base", "large"]


def test_out_of_memory_is_reported_not_raised():
  record = bench._error_record(bench.BenchConfig(size="xxl"),
                               RuntimeError("RESOURCE_EXHAUSTED: Out of memory while"))
  assert record["error"] == "out of memory" and record["size"] == "xxl"


def test_host_allocator_tuning_takes_effect_in_a_fresh_process():
  code = "from ptuning_jax.projects.bench import bench; print(bench.keep_freed_memory())"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, cwd=REPO)
  assert out.stdout.strip().splitlines()[-1] == "True"


# ------------------------------------------------------- bf16, donation, sync --


@pytest.fixture(scope="module")
def bf16_setup():
  config = bench.BenchConfig(size="tiny", batch=2, inputs=8, targets=4, prompt=3,
                             steps=2, warmup=1, dtype="bf16", mesh_data=1)
  setup = bench.build(config)
  batch = bench.synthetic_batch(config, bench.PEFT_TINY.vocab_size)
  return {"config": config, "setup": setup, "state": setup.state,
          "batch": jax.device_put(batch, setup.batch_sharding), "host_batch": batch}


def _float_dtypes(tree):
  return {x.dtype for x in jax.tree_util.tree_leaves(tree)
          if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bf16_policy_keeps_prompt_and_optimizer_state_float32(bf16_setup):
  setup = bf16_setup["setup"]
  assert _float_dtypes(setup.frozen) == {jnp.dtype(jnp.bfloat16)}
  with partitioning.activate(setup.mesh, setup.rules):
    jaxpr = jax.make_jaxpr(setup.raw_step)(bf16_setup["state"], setup.frozen,
                                           bf16_setup["host_batch"])
    state, metrics = setup.step(bf16_setup["state"], setup.frozen, bf16_setup["batch"])
  bf16_setup["state"] = state
  assert _float_dtypes(state.params) == {jnp.dtype(jnp.float32)}
  assert _float_dtypes(state.opt_state) == {jnp.dtype(jnp.float32)}
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  # The float32 prompt [B, P, H] is cast to bfloat16 inside the backbone.
  casts = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "convert_element_type"
           and e.params["new_dtype"] == jnp.bfloat16
           and e.invars[0].aval.shape == (2, 3, 64)
           and e.invars[0].aval.dtype == jnp.float32]
  assert casts


def _eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in flops._sub_jaxprs(value):
        yield from _eqns(sub)


class _ReadCounter(dict):
  """Metrics dict that counts host reads (CPU arrays are read without a
  transfer, so `jax.transfer_guard` cannot see device-to-host syncs here)."""
  reads = 0

  def __getitem__(self, key):
    _ReadCounter.reads += 1
    return super().__getitem__(key)


def test_timed_loop_has_no_host_transfers_or_syncs(bf16_setup):
  setup, config = bf16_setup["setup"], bf16_setup["config"]

  def counting_step(*args):
    state, metrics = setup.step(*args)
    return state, _ReadCounter(metrics)

  spy = dataclasses.replace(setup, step=counting_step)
  with partitioning.activate(setup.mesh, setup.rules):
    batches = bench._batches(config, setup, bf16_setup["host_batch"], 10)
    _ReadCounter.reads = 0
    with jax.transfer_guard_host_to_device("disallow"):
      state, _, seconds = bench._timed(config, spy, bf16_setup["state"], batches)
    assert _ReadCounter.reads == 0 and seconds > 0
    synced = dataclasses.replace(config, host_sync=True)
    state, _, _ = bench._timed(synced, spy, state, batches)
    assert _ReadCounter.reads == config.steps
    # The guard is live: feeding host arrays inside the loop trips it.
    host_fed = dataclasses.replace(config, feed="host")
    with jax.transfer_guard_host_to_device("disallow"), pytest.raises(
        Exception, match="Disallowed host-to-device"):
      bench._timed(host_fed, setup, state,
                   bench._batches(host_fed, setup, bf16_setup["host_batch"], 10))
  bf16_setup["state"] = jax.device_put(state)


def test_prefetch_feed_yields_placed_device_arrays(bf16_setup):
  setup = bf16_setup["setup"]
  config = dataclasses.replace(bf16_setup["config"], feed="prefetch")
  batches = list(bench._batches(config, setup, bf16_setup["host_batch"], 3))
  assert len(batches) == 3
  for batch in batches:
    for key, value in batch.items():
      assert isinstance(value, jax.Array)
      assert value.sharding.is_equivalent_to(setup.batch_sharding, value.ndim), key


def test_trainer_donates_the_state():
  config = testing.tiny_config()
  mesh = partitioning.make_mesh(1, 1, devices=jax.devices()[:1])
  rules = partitioning.standard_logical_axis_rules()
  frozen = testing.init_params(config)
  shardings = jax.tree_util.tree_map(lambda _: partitioning.replicated(mesh), frozen)
  model = seq2seq.Seq2SeqModel(t5.T5(config), prompt_tuning.SoftPrompt(
      t5.hook_spec(config), length=3, initializer=initializers.normal()))
  tx = optimizers.build_optimizer(optimizers.OptimizerConfig())
  state = trainer_lib.create_train_state(
      model.init_trainables(jax.random.key(0), initializers.InitContext()), tx, seed=0)
  trainer = trainer_lib.Trainer(model, tx, mesh, rules, shardings)
  state = trainer.place_state(state)
  batch = trainer.place_batch(_token_batch(config, 2, 5, 3))
  prompt, second_moment = state.params["method"]["prompt"], state.opt_state[0].v["method"]["prompt"]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    new_state, _ = trainer.train_step(state, frozen, batch)
    jax.block_until_ready(new_state)
  assert not [w for w in caught if bench.DONATION_WARNING in str(w.message)]
  assert prompt.is_deleted() and second_moment.is_deleted()


# -------------------------------------------------------- no weight gradients --


def _token_batch(config, b, t, s, seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, config.vocab_size, (b, t)).astype(np.int32)
  enc[0, -2:] = 0  # padding
  tgt = rng.integers(2, config.vocab_size, (b, s)).astype(np.int32)
  dec = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], 1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": tgt, "decoder_loss_weights": np.ones((b, s), np.float32)}


def _prompt_setup(config, p=4):
  model = seq2seq.Seq2SeqModel(t5.T5(config), prompt_tuning.SoftPrompt(
      t5.hook_spec(config), length=p, initializer=initializers.normal()))
  trainables = nn.meta.unbox(model.init_trainables(jax.random.key(1),
                                                   initializers.InitContext()))
  return model, trainables, testing.init_params(config)


def test_train_step_computes_no_weight_gradient():
  config = testing.tiny_config()  # kernels [12, 3, 5], [12, 20], [12, 101], ...
  model, trainables, frozen = _prompt_setup(config)
  batch = _token_batch(config, 2, 6, 4)
  tx = optimizers.build_optimizer(optimizers.OptimizerConfig())
  state = trainer_lib.create_train_state(trainables, tx, seed=0)
  step = lambda st, fr: trainer_lib.train_step(st, fr, batch, model=model, tx=tx)
  kernel_shapes = {tuple(x.shape) for x in jax.tree_util.tree_leaves(frozen) if x.ndim >= 2}
  produced = set(flops.dot_output_shapes(jax.make_jaxpr(step)(state, frozen)))
  assert not produced & kernel_shapes
  # Control: differentiating the frozen weights too produces kernel-shaped dots.
  full = jax.grad(lambda tr, fr: model.loss_fn(tr, fr, batch)[0], argnums=(0, 1))
  assert set(flops.dot_output_shapes(jax.make_jaxpr(full)(trainables, frozen))) & kernel_shapes


# ------------------------------------------------------------------- remat ----


def _loss_and_grads(config, p=4):
  """((loss, prompt grads), jaxpr of the gradient) on a fixed batch."""
  model, trainables, frozen = _prompt_setup(config, p)
  batch = _token_batch(config, 2, 6, 4)
  loss = lambda tr: model.loss_fn(tr, frozen, batch)[0]
  jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(trainables)
  return jax.jit(jax.value_and_grad(loss))(trainables), jaxpr


@pytest.fixture(scope="module")
def plain_loss_and_grads():
  return _loss_and_grads(testing.tiny_config())


@pytest.mark.parametrize("policy", [p for p in t5.REMAT_POLICIES if p != "none"])
def test_remat_policies_keep_loss_and_prompt_gradients(policy, plain_loss_and_grads):
  config = testing.tiny_config()
  (want_loss, want_grads), plain = plain_loss_and_grads
  (loss, grads), jaxpr = _loss_and_grads(dataclasses.replace(config, remat_policy=policy))
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grads["method"]["prompt"]), np.asarray(want_grads["method"]["prompt"]),
                             rtol=1e-5, atol=1e-6)
  remats = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name in ("remat2", "checkpoint")]
  assert len(remats) == config.num_encoder_layers + config.num_decoder_layers
  assert not [e for e in _eqns(plain.jaxpr) if e.primitive.name in ("remat2", "checkpoint")]


# ---------------------------------------------------------- fused attention --


def _attention_inputs(seed=0, b=2, q=5, k=7, h=12, n=3):
  rng = np.random.default_rng(seed)
  xq = rng.standard_normal((b, q, h)).astype(np.float32)
  xkv = rng.standard_normal((b, k, h)).astype(np.float32)
  bias = rng.standard_normal((1, n, q, k)).astype(np.float32)
  mask = np.ones((b, 1, 1, k), bool)
  mask[1, ..., 4:] = False
  return xq, xkv, bias, mask


@pytest.mark.parametrize("case", ["bias_mask", "no_bias", "prefix", "prefix_bias",
                                  "masked_row", "causal"])
def test_fused_attention_equals_einsum_path(case):
  n, d, p = 3, 5, 2
  xq, xkv, bias, mask = _attention_inputs()
  prefix = None
  if case == "no_bias":
    bias = None
  elif case.startswith("prefix"):
    rng = np.random.default_rng(3)
    prefix = (rng.standard_normal((1, p, n, d)).astype(np.float32),
              rng.standard_normal((1, p, n, d)).astype(np.float32))
    if case == "prefix_bias":
      prefix += (rng.standard_normal((1, n, 5, p)).astype(np.float32),)
  elif case == "masked_row":
    mask[0] = False
  elif case == "causal":
    xkv = xq
    bias = bias[..., :5]
    mask = np.tril(np.ones((5, 5), bool))[None, None]
  plain = layers.MultiHeadAttention(num_heads=n, head_dim=d)
  fused = layers.MultiHeadAttention(num_heads=n, head_dim=d, attention_impl="fused_xla")
  params = plain.init(jax.random.key(0), xq, xkv, bias, mask, prefix)["params"]
  want = plain.apply({"params": params}, xq, xkv, bias, mask, prefix)
  got = fused.apply({"params": params}, xq, xkv, bias, mask, prefix)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_fused_attention_whole_model_values_and_prompt_gradients(plain_loss_and_grads,
                                                                monkeypatch):
  calls = []
  fused = layers.fused_attention
  monkeypatch.setattr(layers, "fused_attention",
                      lambda *args: calls.append(args[5]) or fused(*args))
  config = dataclasses.replace(testing.tiny_config(), attention_impl="fused_xla")
  (want_loss, want_grads), _ = plain_loss_and_grads
  (loss, grads), _ = _loss_and_grads(config)
  # Every attention of the 2 + 3 layers (decoder: self and cross) went fused.
  assert calls and set(calls) == {"fused_xla"} and len(calls) % (2 + 2 * 3) == 0
  np.testing.assert_allclose(loss, want_loss, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(grads["method"]["prompt"]), np.asarray(want_grads["method"]["prompt"]),
                             rtol=1e-4, atol=1e-5)


def test_attention_selection_and_fallbacks():
  f32, bf16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)
  assert layers.select_attention_impl("xla", bf16, 64) == "xla"
  assert layers.select_attention_impl("fused_xla", f32, 5) == "fused_xla"
  # On this CPU, "auto" is the einsum path; so is any choice under dropout.
  assert layers.select_attention_impl("auto", bf16, 64) == "xla"
  assert layers.select_attention_impl("fused_xla", f32, 5, dropout_active=True) == "xla"
  with pytest.raises(ValueError, match="needs a GPU"):
    layers.select_attention_impl("cudnn", bf16, 64)
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    layers.select_attention_impl("flash", bf16, 64)
  assert layers.cudnn_unsupported_reason(f32, 64) is not None
  xq, xkv, bias, mask = _attention_inputs()
  module = layers.MultiHeadAttention(num_heads=3, head_dim=5, attention_impl="cudnn")
  with pytest.raises(ValueError, match="cudnn"):
    module.init(jax.random.key(0), xq, xkv, bias, mask)


# ------------------------------------------------------------ cross-entropy --


def _one_hot_cross_entropy(logits, targets, weights, z_loss=0.0, label_smoothing=0.0):
  """The textbook definition the gather-based version must equal."""
  vocab = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  onehot = jax.nn.one_hot(targets, vocab)
  if label_smoothing:
    onehot = onehot * (1 - label_smoothing) + label_smoothing / vocab
  loss = -jnp.sum(onehot * log_probs, axis=-1)
  if z_loss:
    loss = loss + z_loss * jnp.square(jax.nn.logsumexp(logits, axis=-1))
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return jnp.sum(loss * weights), jnp.sum(weights), jnp.sum(correct * weights)


@pytest.mark.parametrize("z_loss,smoothing", [(0.0, 0.0), (1e-3, 0.0), (0.0, 0.1), (1e-4, 0.2)])
def test_cross_entropy_equals_one_hot_definition(z_loss, smoothing):
  logits = 3 * jax.random.normal(jax.random.key(0), (3, 5, 11))
  logits = logits.at[0, 0].set(0.0)  # every class ties: argmax takes the first
  logits = logits.at[1, 1, 4].set(50.0).at[1, 1, 7].set(50.0)  # tie, target 7
  targets = jax.random.randint(jax.random.key(1), (3, 5), 0, 11)
  targets = targets.at[0, 0].set(0).at[1, 1].set(7).at[2, 2].set(11).at[2, 3].set(-1)
  weights = jax.random.uniform(jax.random.key(2), (3, 5))
  def value_and_grad(fn):
    split = lambda l: (lambda out: (out[0], out[1:]))(
        fn(l, targets, weights, z_loss, smoothing))
    return jax.jit(jax.value_and_grad(split, has_aux=True))(logits)

  (got_total, got_rest), got_grad = value_and_grad(losses.cross_entropy)
  (want_total, want_rest), want_grad = value_and_grad(_one_hot_cross_entropy)
  np.testing.assert_allclose(float(got_total), float(want_total), rtol=1e-5)
  assert float(got_rest[0]) == float(want_rest[0])  # weights
  assert float(got_rest[1]) == float(want_rest[1])  # accuracy counts: exact
  np.testing.assert_allclose(np.asarray(got_grad), np.asarray(want_grad),
                             rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ bench_compare --


def _record(system, size, ex, mem=None, rss=1.0):
  return {"system": system, "size": size, "examples_per_s": ex, "step_s": 8 / ex,
          "peak_mem_gib": mem, "child_peak_rss_gib": rss}


def test_compare_summary_ratios_and_table():
  records = [_record("ours", "tiny", 400.0, rss=0.5), _record("peft", "tiny", 100.0, rss=1.0),
             _record("ours", "tiny", 300.0, rss=0.5), _record("peft", "tiny", 200.0, rss=1.0),
             _record("ours", "base", 60.0, mem=3.0), _record("peft", "base", 20.0, mem=9.0)]
  rows = compare.summarize(records)
  by = {(r["size"], r["system"]): r for r in rows}
  assert by["tiny", "ours"]["examples_per_s"] == 350.0
  assert by["tiny", "peft"]["examples_per_s"] == 150.0
  assert by["tiny", "peft"]["speed_ratio_ours_over_this"] == round(350 / 150, 3)
  assert by["tiny", "peft"]["memory_ratio_ours_over_this"] == 0.5
  assert by["tiny", "peft"]["memory_kind"] == "process peak RSS"
  assert by["base", "peft"]["speed_ratio_ours_over_this"] == 3.0
  assert by["base", "peft"]["memory_ratio_ours_over_this"] == round(3 / 9, 3)
  assert by["base", "ours"]["memory_kind"] == "device peak"
  table = compare.format_table(rows)
  assert "ours/this ex/s" in table and "2.333" in table and len(table.splitlines()) == 5


def test_compare_missing_peft_script_is_a_clear_error(tmp_path):
  with pytest.raises(SystemExit, match="does not exist"):
    compare.main(["--peft_script", str(tmp_path / "nope.py")])


def test_compare_commands_share_the_shapes():
  args = compare.parser().parse_args(
      ["--batch", "8", "--inputs", "128", "--targets", "8", "--prompt", "20",
       "--bench_args", "--remat full"])
  ours = compare.ours_command("small", args)
  peft = compare.peft_command(pathlib.Path("p.py"), "small", args)
  for cmd in (ours, peft):
    for flag, value in [("--size", "small"), ("--batch", "8"), ("--inputs", "128"),
                        ("--targets", "8"), ("--prompt", "20"), ("--dtype", "fp32")]:
      assert cmd[cmd.index(flag) + 1] == value
  assert ours[-2:] == ["--remat", "full"] and peft[-2:] == ["--device", "cpu"]


@pytest.mark.slow
def test_compare_end_to_end_with_a_stand_in_peft_script(tmp_path, capsys):
  fake = tmp_path / "peft_t5_baseline.py"
  fake.write_text(
      "import json, sys\n"
      "a = sys.argv\n"
      "size = a[a.index('--size') + 1]\n"
      "print(json.dumps(dict(system='peft', size=size, step_s=0.5, examples_per_s=4.0,"
      " peak_mem_gib=None)))\n")
  rows = compare.main(["--sizes", "tiny", "--peft_script", str(fake), "--batch", "2",
                             "--inputs", "8", "--targets", "4", "--prompt", "3",
                             "--steps", "2", "--warmup", "1",
                             "--bench_args", "--mesh_data 1 --default_malloc"])
  by = {r["system"]: r for r in rows}
  assert by["peft"]["examples_per_s"] == 4.0
  assert by["peft"]["speed_ratio_ours_over_this"] == round(
      by["ours"]["examples_per_s"] / 4.0, 3)
  assert by["ours"]["memory_gib"] > 0.1  # a JAX process's peak RSS
  assert "ours/this" in capsys.readouterr().out
