"""Parity with Hugging Face PEFT 0.22 (PyTorch, transformers 5) on one random T5.

The same random-weight checkpoint (`testing.make_hf_t5`) is loaded by
transformers and by `hf_t5.load_params`; PEFT's initial trainable
tensors are copied into our parameters; loss and gradients must agree within
1e-4. PEFT's seq2seq defaults are kept and mapped exactly:

Prompt tuning (`PromptTuningConfig`, RANDOM = N(0, 1) init). With
`num_transformer_submodules=2` (PEFT's seq2seq default) the embedding has
2 P rows, but `PeftModelForSeq2SeqLM.forward` prepends only rows [0, P) to the
encoder input (the decoder half is used by multitask prompt tuning only);
rows [P, 2 P) get zero gradient. Ours: `SoftPrompt(length=P)`, prompt = rows
[0, P).

Prefix tuning (`PrefixTuningConfig`, no projection). PEFT views its
[P, 2 L N D] embedding as [P, 2 L, N, D], duplicates it to 4 L entries for
two submodules and splits per layer, so decoder layer l gets entries
(4 l, 4 l + 1) mod 2 L as its self-attention key and value, and
(4 l + 2, 4 l + 3) mod 2 L as cross-attention key/value. transformers 5's
T5 then (a) passes no cache to the encoder: no encoder prefix; (b) PEFT
replaces the cross-attention cache by an empty one (the encoder output
changed), so the cross prefixes are discarded (zero gradient); (c) the
decoder self-attention treats the prefix as P past positions: queries sit
at positions P .. P + S - 1 and the layer-0 `compute_bias` runs with
`past_seen_tokens = P` over P + S keys, so prefix key j gets the causal
relative-position bias of distance q + P - j. Our `KVPrefix` hook gives
prefix keys zero bias (decoder-token biases depend only on q - k and agree).
The effective PEFT method is therefore `PrefixTuning(sites=("decoder/self",))`
with that layer mapping. With `positions="past"` (`hooks.KVPrefix`) our T5
biases the prefix keys as positions -P .. -1, exactly (c), and parity holds
with HF unpatched (`test_prefix_tuning_matches_peft_exactly`); with the
default zero prefix bias it holds once HF's prefix bias columns are zeroed;
`test_prefix_tuning_transformers_prefix_position_bias` pins down (c) and
shows the losses differ without zeroing.

Multitask prompt tuning (`MultitaskPromptTuningConfig`, RANDOM init: the
embedding N(0, 1), factors N(0, 0.02)). Unlike prompt tuning, PEFT's
seq2seq forward uses both halves of the 2 P-row task prompt
embedding * (cols_k @ rows_k): rows [0, P) before the encoder input, rows
[P, 2 P) before the decoder input (it derives the decoder inputs from the
labels, -100 for the prompt positions). Ours: `mpt.MPT(decoder_length=P)`
(a decoder `prefix` hook); with `num_transformer_submodules=1`, `mpt.MPT()`.

Dimension letters: B batch, T input length, S target length, P virtual
tokens, L layers, N heads, D head dim, H d_model.
"""
import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax.backbones.hf import t5 as hf_t5
from ptuning_jax import hooks as hooks_lib
from ptuning_jax.backbones import layers
from ptuning_jax.models import seq2seq
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.backbones import t5
from ptuning_jax import testing
from ptuning_jax.methods import mpt
from ptuning_jax.methods import prefix_tuning

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

P = 3
# PEFT splits token_dim = H into N heads of H / N: needs N D = H. Odd L makes
# PEFT's prefix layer mapping a permutation, so every entry is checked.
CONFIG = testing.tiny_config(vocab_size=53, d_model=12, num_heads=3, d_kv=4,
                             num_encoder_layers=3, num_decoder_layers=3)
SPEC = t5.hook_spec(CONFIG)
ATOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  path = testing.make_hf_t5(str(tmp_path_factory.mktemp("peft")), CONFIG, seed=0)
  return path, hf_t5.load_params(path, CONFIG)


def _batch():
  batch = mt.make_batch(CONFIG.vocab_size, seed=4, batch=4, length=7, target_length=5)
  batch["encoder_input_tokens"][1, 4:] = 0  # rows of different lengths
  return batch


def _peft_model(path, peft_config):
  base = testing.load_hf_model(path)
  torch.manual_seed(0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = peft.get_peft_model(base, peft_config)
  return model.eval()


def _peft_loss_and_grad(model, batch):
  enc = torch.tensor(batch["encoder_input_tokens"], dtype=torch.long)
  labels = torch.tensor(batch["decoder_target_tokens"], dtype=torch.long)
  labels[torch.tensor(batch["decoder_loss_weights"]) == 0] = -100
  weight = model.prompt_encoder["default"].embedding.weight
  weight.grad = None
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = model(input_ids=enc, attention_mask=(enc != 0).long(), labels=labels,
                decoder_input_ids=torch.tensor(batch["decoder_input_tokens"],
                                               dtype=torch.long))
  out.loss.backward()
  return float(out.loss.detach()), weight.grad.detach().numpy().copy()


def _our_loss_and_grad(method, trainables, params, batch):
  """Loss and gradients w.r.t. the method's parameters `trainables`."""
  model = seq2seq.Seq2SeqModel(t5.T5(CONFIG), method)
  grad_fn = jax.jit(jax.value_and_grad(lambda tr, b: model.loss_fn(tr, params, b)[0]))
  loss, grads = grad_fn({"method": trainables}, batch)
  return float(loss), jax.tree_util.tree_map(np.asarray, grads["method"])


# ------------------------------- prompt tuning -------------------------------


def test_prompt_tuning_matches_peft(checkpoint):
  path, params = checkpoint
  config = peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P)
  model = _peft_model(path, config)
  assert config.num_transformer_submodules == 2  # PEFT's seq2seq default
  assert config.prompt_tuning_init == peft.PromptTuningInit.RANDOM
  weight = model.prompt_encoder["default"].embedding.weight.detach().numpy()
  assert weight.shape == (2 * P, CONFIG.d_model)
  assert 0.5 < weight.std() < 1.5  # N(0, 1), not prompt-tuning's U[0, 0.5)
  batch = _batch()
  peft_loss, peft_grad = _peft_loss_and_grad(model, batch)

  method = prompt_tuning.SoftPrompt(spec=SPEC, length=P,
                                    initializer=initializers.normal())
  trainables = {"prompt": weight[:P].copy()}
  loss, grads = _our_loss_and_grad(method, trainables, params, batch)
  np.testing.assert_allclose(loss, peft_loss, atol=ATOL, rtol=0)
  np.testing.assert_allclose(grads["prompt"], peft_grad[:P], atol=ATOL, rtol=0)
  np.testing.assert_array_equal(peft_grad[P:], 0.0)  # decoder half unused
  assert np.abs(grads["prompt"]).max() > 1e-3


# ------------------------------- prefix tuning -------------------------------


def _peft_layer_entries(num_layers: int, layer: int) -> dict:
  """PEFT's seq2seq prefix entries (of 2 L) used by decoder layer `layer`."""
  return {"self_key": (4 * layer) % (2 * num_layers),
          "self_value": (4 * layer + 1) % (2 * num_layers),
          "cross_key": (4 * layer + 2) % (2 * num_layers),
          "cross_value": (4 * layer + 3) % (2 * num_layers)}


def _prefix_from_peft(weight: np.ndarray) -> dict:
  """PEFT's embedding [P, 2 L N D] -> our parameters of the site "decoder/self",
  {"decoder_self": {key, value} [L, P, K = N, D]}."""
  layers = CONFIG.num_decoder_layers
  entries = weight.reshape(P, 2 * layers, CONFIG.num_heads, CONFIG.d_kv)
  keys, values = [], []
  for layer in range(layers):
    e = _peft_layer_entries(layers, layer)
    keys.append(entries[:, e["self_key"]])
    values.append(entries[:, e["self_value"]])
  return {"decoder_self": {"key": np.stack(keys), "value": np.stack(values)}}


def _grad_to_peft(grads: dict) -> np.ndarray:
  """Our decoder_self gradients scattered back into PEFT's [P, 2 L N D] layout."""
  layers = CONFIG.num_decoder_layers
  out = np.zeros((P, 2 * layers, CONFIG.num_heads, CONFIG.d_kv), np.float32)
  for layer in range(layers):
    e = _peft_layer_entries(layers, layer)
    out[:, e["self_key"]] += grads["decoder_self"]["key"][layer]
    out[:, e["self_value"]] += grads["decoder_self"]["value"][layer]
  return out.reshape(P, -1)


def _zero_prefix_bias(model, calls: list):
  """Patches the decoder's layer-0 `compute_bias` (shared by all layers) to
  record its arguments and give the `past_seen_tokens` prefix keys zero bias."""
  attention = model.get_base_model().decoder.block[0].layer[0].SelfAttention
  original = attention.compute_bias

  @functools.wraps(original)
  def patched(query_length, key_length, device=None, past_seen_tokens=0):
    calls.append((int(query_length), int(key_length), int(past_seen_tokens)))
    bias = original(query_length, key_length, device=device,
                    past_seen_tokens=past_seen_tokens).clone()
    bias[..., :int(past_seen_tokens)] = 0.0
    return bias
  attention.compute_bias = patched


def _prefix_setup(checkpoint):
  path, params = checkpoint
  config = peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P)
  model = _peft_model(path, config)
  assert config.num_transformer_submodules == 2
  assert (config.num_layers, config.token_dim, config.num_attention_heads) == (
      CONFIG.num_decoder_layers, CONFIG.d_model, CONFIG.num_heads)
  weight = model.prompt_encoder["default"].embedding.weight.detach().numpy()
  method = prefix_tuning.PrefixTuning(SPEC, length=P, sites=("decoder/self",))
  return model, weight, method, params


def test_prefix_tuning_matches_peft_without_prefix_position_bias(checkpoint):
  model, weight, method, params = _prefix_setup(checkpoint)
  calls = []
  _zero_prefix_bias(model, calls)
  batch = _batch()
  peft_loss, peft_grad = _peft_loss_and_grad(model, batch)
  assert calls == [(5, P + 5, P)]  # once per forward, the prefix as P past tokens

  loss, grads = _our_loss_and_grad(method, _prefix_from_peft(weight), params, batch)
  np.testing.assert_allclose(loss, peft_loss, atol=ATOL, rtol=0)
  np.testing.assert_allclose(_grad_to_peft(grads), peft_grad, atol=ATOL, rtol=0)
  # Odd L: PEFT's mapping is a permutation of all 2 L entries, so the cross
  # entries of a layer are the self entries of another; all got gradients.
  per_entry = np.abs(peft_grad.reshape(P, 2 * CONFIG.num_decoder_layers, -1)).sum((0, 2))
  assert (per_entry > 1e-4).all()


def test_prefix_tuning_transformers_prefix_position_bias(checkpoint):
  """What transformers 5 does with the prefix cache: the decoder's relative
  position bias over the P prefix keys is the causal bias of real past
  positions 0 .. P - 1 for queries at P .. P + S - 1."""
  model, weight, method, params = _prefix_setup(checkpoint)
  attention = model.get_base_model().decoder.block[0].layer[0].SelfAttention
  recorded = []
  original = attention.compute_bias

  def recording(*args, **kwargs):
    out = original(*args, **kwargs)
    recorded.append(out.detach().numpy().copy())
    return out
  attention.compute_bias = recording
  batch = _batch()
  peft_loss, _ = _peft_loss_and_grad(model, batch)
  (bias,) = recorded  # [1, N, S, P + S]
  table = params["decoder"]["relpos_bias"]["rel_embedding"]  # [R, N]
  q = np.arange(5)[:, None] + P
  k = np.arange(P + 5)[None, :]
  buckets = layers.relative_position_buckets(
      k - q, bidirectional=False, num_buckets=CONFIG.relative_attention_num_buckets,
      max_distance=CONFIG.relative_attention_max_distance)
  np.testing.assert_allclose(bias[0], np.transpose(table[buckets], (2, 0, 1)), atol=1e-6)
  # That bias is the only difference: without zeroing it the losses differ.
  loss, _ = _our_loss_and_grad(method, _prefix_from_peft(weight), params, batch)
  assert abs(loss - peft_loss) > 1e-3


def test_prefix_tuning_matches_peft_exactly(checkpoint):
  """`positions="past"`: no patching of transformers' position bias."""
  model, weight, method, params = _prefix_setup(checkpoint)
  method = method.clone(positions="past")
  batch = _batch()
  peft_loss, peft_grad = _peft_loss_and_grad(model, batch)
  loss, grads = _our_loss_and_grad(method, _prefix_from_peft(weight), params, batch)
  np.testing.assert_allclose(loss, peft_loss, atol=ATOL, rtol=0)
  np.testing.assert_allclose(_grad_to_peft(grads), peft_grad, atol=ATOL, rtol=0)
  assert np.abs(peft_grad).max() > 1e-3


# ---------------------------- prefix positions --------------------------------


def _random_prefix(num_layers, batch, positions, seed):
  rng = np.random.default_rng(seed)
  shape = (num_layers, batch, P, CONFIG.num_heads, CONFIG.d_kv)
  return hooks_lib.KVPrefix(key=rng.standard_normal(shape).astype(np.float32),
                            value=rng.standard_normal(shape).astype(np.float32),
                            positions=positions)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_past_prefix_bias_is_the_bias_of_positions_before_the_sequence(bidirectional):
  """t5._prefix_bias: query q, prefix key j -> table[bucket((j - P) - q)]."""
  relpos = layers.RelativePositionBias(CONFIG.relative_attention_num_buckets,
                                       CONFIG.relative_attention_max_distance,
                                       CONFIG.num_heads, bidirectional=bidirectional)
  table = np.random.default_rng(0).standard_normal(
      (CONFIG.relative_attention_num_buckets, CONFIG.num_heads)).astype(np.float32)
  prefix = _random_prefix(1, 1, "past", 0)
  q_len, k_len, offset = 4, 9, 2

  def bias(q_offset):
    return relpos.apply({"params": {"rel_embedding": table}},
                        method=lambda m: t5._prefix_bias(m, prefix, q_len, k_len, q_offset))
  buckets = layers.relative_position_buckets(
      (np.arange(P)[None, :] - P) - (np.arange(q_len)[:, None] + offset),
      bidirectional=bidirectional, num_buckets=CONFIG.relative_attention_num_buckets,
      max_distance=CONFIG.relative_attention_max_distance)
  want = np.transpose(table[buckets], (2, 0, 1))[None]  # [1, N, Q, P]
  np.testing.assert_array_equal(np.asarray(bias(offset)), want)
  np.testing.assert_array_equal(np.asarray(jax.jit(bias)(jnp.int32(offset))), want)
  none = dataclasses.replace(prefix, positions="none")
  assert relpos.apply({"params": {"rel_embedding": table}},
                      method=lambda m: t5._prefix_bias(m, none, q_len, k_len)) is None
  with pytest.raises(ValueError, match="KVPrefix.positions='later'"):
    dataclasses.replace(prefix, positions="later")


def test_past_prefix_positions_change_the_encoder_not_cross_attention(checkpoint):
  _, params = checkpoint
  batch = _batch()
  model = t5.T5(CONFIG)

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def apply(site, positions):
    layers_ = SPEC.site(site).num_layers
    hooks = hooks_lib.Hooks(kv_prefixes={site: _random_prefix(layers_, 1, positions, 1)})
    return model.apply({"params": params}, batch["encoder_input_tokens"],
                       batch["decoder_input_tokens"], hooks=hooks)

  def logits(site, positions):
    return np.asarray(apply(site, positions))
  # (decoder/self: the exact-parity test above differs from the zero-bias one.)
  assert np.abs(logits("encoder/self", "past") - logits("encoder/self", "none")).max() > 1e-3
  # Cross-attention has no position bias: "past" is "none" there.
  np.testing.assert_array_equal(logits("decoder/cross", "past"),
                                logits("decoder/cross", "none"))


def test_past_prefix_cached_decoding_matches_full_pass(checkpoint):
  """The traced (cache index) path gives the teacher-forced logits."""
  _, params = checkpoint
  batch = _batch()
  enc, dec = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
  hooks = hooks_lib.Hooks(kv_prefixes={
      "decoder/self": _random_prefix(CONFIG.num_decoder_layers, enc.shape[0], "past", 2),
      "encoder/self": _random_prefix(CONFIG.num_encoder_layers, 1, "past", 3)})
  model = t5.T5(CONFIG)

  @jax.jit
  def prepare(variables):  # full pass, encoder outputs, allocated cache
    encoded, mask = model.apply(variables, enc, hooks=hooks, method=model.encode)
    _, state = model.apply(variables, encoded, mask, dec, hooks=hooks, decode=True,
                           method=model.decode, mutable=["cache"])
    return model.apply(variables, enc, dec, hooks=hooks), encoded, mask, state
  full, encoded, mask, state = prepare({"params": params})
  step = jax.jit(functools.partial(model.apply, method=model.decode, decode=True,
                                   mutable=["cache"], hooks=hooks))
  for i in range(dec.shape[1]):
    out, state = step({"params": params, "cache": state["cache"]}, encoded, mask,
                      dec[:, i:i + 1])
    np.testing.assert_allclose(np.asarray(out), np.asarray(full[:, i:i + 1]),
                               atol=1e-5, rtol=1e-5)


# --------------------------- multitask prompt tuning ---------------------------


@pytest.mark.parametrize("submodules", [2, 1])
def test_multitask_prompt_tuning_matches_peft(checkpoint, submodules):
  """`MultitaskPromptTuningConfig` (RANDOM init, K tasks, r ranks) equals
  `mpt.MPT`. With PEFT's seq2seq default of two submodules the prompt and
  column factors have 2 P rows: rows [0, P) of the task prompt go before the
  encoder input, rows [P, 2 P) before the decoder input (labels -100 there):
  `MPT(decoder_length=P)`. With one submodule: encoder only, P rows."""
  path, params = checkpoint
  num_tasks, ranks = 2, 2
  config = peft.MultitaskPromptTuningConfig(
      task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P, num_tasks=num_tasks,
      num_ranks=ranks, num_transformer_submodules=submodules)
  model = _peft_model(path, config)
  encoder = model.prompt_encoder["default"]
  tensors = {"prompt": encoder.embedding.weight, "prefix_task_cols": encoder.prefix_task_cols,
             "prefix_task_rows": encoder.prefix_task_rows}
  trainables = {k: v.detach().numpy().copy() for k, v in tensors.items()}
  assert trainables["prompt"].shape == (submodules * P, CONFIG.d_model)
  assert trainables["prefix_task_cols"].shape == (num_tasks, submodules * P, ranks)
  assert 0.5 < trainables["prompt"].std() < 1.5  # N(0, 1)
  assert 0.01 < trainables["prefix_task_rows"].std() < 0.04  # N(0, 0.02)
  # At PEFT's init the task prompts are ~4e-4: the first RMS norm divides by
  # that, so gradients reach ~1e2..1e3 and float32 summation order alone
  # exceeds 1e-4. Compare at factors of unit scale instead (same values on
  # both sides).
  rng = np.random.default_rng(7)
  with torch.no_grad():
    for name in ("prefix_task_cols", "prefix_task_rows"):
      value = rng.standard_normal(trainables[name].shape).astype(np.float32)
      tensors[name].copy_(torch.from_numpy(value))
      trainables[name] = value
  batch = _batch()
  task_ids = np.array([1, 0, 1, 1], np.int32)
  enc = torch.tensor(batch["encoder_input_tokens"], dtype=torch.long)
  labels = torch.tensor(batch["decoder_target_tokens"], dtype=torch.long)
  labels[torch.tensor(batch["decoder_loss_weights"]) == 0] = -100
  with warnings.catch_warnings():  # PEFT derives the decoder inputs from labels
    warnings.simplefilter("ignore")
    out = model(input_ids=enc, attention_mask=(enc != 0).long(), labels=labels,
                task_ids=torch.tensor(task_ids, dtype=torch.long))
  out.loss.backward()
  peft_grads = {k: v.grad.detach().numpy() for k, v in tensors.items()}

  method = mpt.MPT(SPEC, num_tasks=num_tasks, length=P, rank=ranks,
                   decoder_length=(submodules - 1) * P)
  loss, grads = _our_loss_and_grad(method, trainables, params,
                                   dict(batch, task_index=task_ids))
  np.testing.assert_allclose(loss, float(out.loss.detach()), atol=ATOL, rtol=0)
  for name, grad in grads.items():
    np.testing.assert_allclose(grad, peft_grads[name], atol=ATOL, rtol=0, err_msg=name)
    assert np.abs(grad).max() > 1e-6, name
  decoder_rows = grads["prompt"][P:]
  assert decoder_rows.shape[0] == (submodules - 1) * P
  assert submodules == 1 or np.abs(decoder_rows).max() > 1e-6  # the decoder half learns
