"""Parity with Hugging Face PEFT 0.21 (PyTorch, transformers 5) on one random T5.

The same random-weight checkpoint (`testing.make_hf_t5`) is loaded by
transformers and by `hf_checkpoints.load_params`; PEFT's initial trainable
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
The effective PEFT method is therefore `PrefixTuning(sites=("decoder_self",))`
with that layer mapping, and parity holds exactly once HF's prefix bias
columns are zeroed; `test_prefix_tuning_transformers_prefix_position_bias`
pins down (c) and shows the losses differ without zeroing.

(Multitask prompt tuning parity belongs with the MPT method.)

Dimension letters: B batch, T input length, S target length, P virtual
tokens, L layers, N heads, D head dim, H d_model.
"""
import functools
import warnings

import jax
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax import hf_checkpoints
from ptuning_jax import models
from ptuning_jax import prompts
from ptuning_jax import t5
from ptuning_jax import testing
from ptuning_jax.methods import prefix_tuning

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

P = 3
# PEFT splits token_dim = H into N heads of H / N: needs N D = H. Odd L makes
# PEFT's prefix layer mapping a permutation, so every entry is checked.
CONFIG = testing.tiny_config(vocab_size=53, d_model=12, num_heads=3, d_kv=4,
                             num_encoder_layers=3, num_decoder_layers=3)
ATOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  path = testing.make_hf_t5(str(tmp_path_factory.mktemp("peft")), CONFIG, seed=0)
  return path, hf_checkpoints.load_params(path, CONFIG)


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
  model = models.PromptModel(t5.T5(CONFIG), method)
  grad_fn = jax.value_and_grad(lambda tr: model.loss_fn(tr, params, batch)[0])
  loss, grads = grad_fn(trainables)
  return float(loss), jax.tree_util.tree_map(np.asarray, grads)


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

  method = prompts.SoftPrompt(backbone_config=CONFIG, length=P,
                              initializer=prompts.normal())
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
  """PEFT's embedding [P, 2 L N D] -> our decoder_self {key, value} [L, P, N, D]."""
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
  method = prefix_tuning.PrefixTuning(CONFIG, length=P, sites=("decoder_self",))
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
  from ptuning_jax import layers  # pylint: disable=g-import-not-at-top
  buckets = layers.relative_position_buckets(
      k - q, bidirectional=False, num_buckets=CONFIG.relative_attention_num_buckets,
      max_distance=CONFIG.relative_attention_max_distance)
  np.testing.assert_allclose(bias[0], np.transpose(table[buckets], (2, 0, 1)), atol=1e-6)
  # That bias is the only difference: without zeroing it the losses differ.
  loss, _ = _our_loss_and_grad(method, _prefix_from_peft(weight), params, batch)
  assert abs(loss - peft_loss) > 1e-3
