"""Tests of ptuning_jax.models.decoding against HF generate and uncached references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptuning_jax.models import decoding
from ptuning_jax.backbones.hf import t5 as hf_t5
from ptuning_jax import hooks as hooks_lib
from ptuning_jax.backbones import t5
from ptuning_jax import testing

ODD_ORIGINAL = t5.original_t5_config(
    "small", vocab_size=97, d_model=16, num_heads=2, d_kv=8, d_ff=24,
    num_encoder_layers=2, num_decoder_layers=1, relative_attention_num_buckets=6,
    relative_attention_max_distance=9)


def _inputs(config, seed=0, batch=3, length=9):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, config.vocab_size, size=(batch, length))
  for row, n in enumerate([length, 4, 6][:batch]):
    enc[row, n - 1] = 1
    enc[row, n:] = 0
  return jnp.asarray(enc, jnp.int32)


def _hf_generate(hf, enc, max_new_tokens, eos_id=None):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import cache_utils  # pylint: disable=g-import-not-at-top
  enc_t = torch.tensor(np.asarray(enc), dtype=torch.long)
  # An explicit cache: transformers 5.24 sizes its default cache with the
  # encoder depth and fails when the decoder is deeper.
  cache = cache_utils.EncoderDecoderCache(cache_utils.DynamicCache(),
                                          cache_utils.DynamicCache())
  kwargs = {} if eos_id is None else {"eos_token_id": eos_id}
  with torch.no_grad():
    out = hf.generate(input_ids=enc_t, attention_mask=(enc_t != 0).long(), do_sample=False,
                      num_beams=1, max_new_tokens=max_new_tokens, cache=cache,
                      **kwargs).numpy()
  assert (out[:, 0] == 0).all()  # decoder start token
  got = np.zeros((out.shape[0], max_new_tokens), np.int64)
  got[:, :out.shape[1] - 1] = out[:, 1:]
  return got


@pytest.fixture(scope="module")
def hf_pairs(tmp_path_factory):
  pytest.importorskip("torch")
  out = {}
  for name, config in (("t5_1_1", testing.tiny_config()), ("original", ODD_ORIGINAL)):
    path = testing.make_hf_t5(tmp_path_factory.mktemp(name), config, seed=11)
    loaded, params = hf_t5.load_checkpoint(path)
    out[name] = (t5.T5(loaded), params, testing.load_hf_model(path))
  return out


@pytest.mark.parametrize("name", ["t5_1_1", "original"])
def test_greedy_decode_matches_hf_generate(hf_pairs, name):
  model, params, hf = hf_pairs[name]
  enc = _inputs(model.config, seed=1)
  got = decoding.jit_greedy_decode(model, params, enc, max_decode_length=7)
  assert got.shape == (3, 7) and got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), _hf_generate(hf, enc, 7))
  # Stopping: make a token generated mid-sequence the EOS id.
  eos = int(np.asarray(got)[0, 3])
  stopped = decoding.jit_greedy_decode(model, params, enc, max_decode_length=7, eos_id=eos)
  want = _hf_generate(hf, enc, 7, eos_id=eos)
  np.testing.assert_array_equal(np.asarray(stopped), want)
  first = int(np.argmax(want[0] == eos))
  assert first <= 3 and (want[0, first + 1:] == 0).all()


def _uncached_greedy(model, params, enc, length, hooks):
  """Reference: re-run the full decoder on the growing prefix each step."""
  batch = enc.shape[0]
  tokens = jnp.zeros((batch, length + 1), jnp.int32)
  forward = jax.jit(lambda dec: model.apply({"params": params}, enc, dec, hooks=hooks))
  done = np.zeros(batch, bool)
  out = np.zeros((batch, length), np.int64)
  for i in range(length):
    nxt = np.asarray(jnp.argmax(forward(tokens[:, :length])[:, i], -1))
    nxt = np.where(done, 0, nxt)
    out[:, i] = nxt
    done |= nxt == 1
    tokens = tokens.at[:, i + 1].set(nxt)
  return out


def test_greedy_decode_with_hooks_inside_jit_matches_uncached_reference():
  config = testing.tiny_config()
  model = t5.T5(config)
  params = testing.init_params(config, seed=5)
  enc = _inputs(config, seed=2)
  batch, nd = enc.shape[0], config.num_heads * config.d_kv
  rng = np.random.RandomState(0)

  def make_hooks(trainable):
    prompt = trainable["prompt"]
    prefixes = {site: hooks_lib.KVPrefix(key=trainable[site], value=trainable[site] * 0.5)
                for site in SITES}
    return hooks_lib.Hooks(
        inputs={"encoder": lambda x, t, m: (
            jnp.concatenate([jnp.broadcast_to(prompt, (x.shape[0],) + prompt.shape), x], 1),
            jnp.concatenate([jnp.ones((x.shape[0], prompt.shape[0]), bool), m], 1))},
        prefix={"decoder": jnp.broadcast_to(trainable["dprompt"],
                                            (batch, 2, config.d_model))},
        kv_prefixes=prefixes,
        scales={"decoder/self/v": trainable["scale"]})

  SITES = t5.hook_spec(config).attention_sites

  def layers_of(site):
    return config.num_encoder_layers if site == "encoder/self" else config.num_decoder_layers

  trainable = {"prompt": rng.randn(3, config.d_model), "dprompt": rng.randn(2, config.d_model),
               "scale": 1 + 0.3 * rng.randn(3, nd),
               **{s: rng.randn(layers_of(s), 1, 2, config.num_heads, config.d_kv)
                  for s in SITES}}
  trainable = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), trainable)
  decode = jax.jit(lambda tr, enc: decoding.greedy_decode(
      model, params, enc, max_decode_length=6, hooks=make_hooks(tr)))
  got = np.asarray(decode(trainable, enc))
  want = _uncached_greedy(model, params, enc, 6, make_hooks(trainable))
  np.testing.assert_array_equal(got, want)
  plain = np.asarray(decoding.jit_greedy_decode(model, params, enc, max_decode_length=6))
  assert not np.array_equal(got, plain)


def test_greedy_decode_validates_length():
  config = testing.tiny_config()
  with pytest.raises(ValueError, match="max_decode_length"):
    decoding.greedy_decode(t5.T5(config), testing.init_params(config),
                           jnp.ones((1, 3), jnp.int32), max_decode_length=0)


def test_sequence_log_likelihood_matches_hf(hf_pairs):
  torch = pytest.importorskip("torch")
  model, params, hf = hf_pairs["original"]
  enc = _inputs(model.config, seed=3)
  targets = np.asarray([[5, 6, 7, 1], [8, 1, 0, 0], [9, 10, 1, 0]])
  weights = (targets != 0).astype(np.float32)
  inputs = np.asarray(decoding.shift_right(jnp.asarray(targets)))
  got = decoding.sequence_log_likelihood(model, params, enc, jnp.asarray(inputs),
                                         jnp.asarray(targets), jnp.asarray(weights))
  enc_t = torch.tensor(np.asarray(enc), dtype=torch.long)
  with torch.no_grad():
    logits = hf(input_ids=enc_t, attention_mask=(enc_t != 0).long(),
                labels=torch.tensor(np.where(targets == 0, -100, targets))).logits
    log_probs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(targets)[..., None])[..., 0]
  want = (log_probs.numpy() * weights).sum(-1)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_rank_classify_equals_per_candidate_scoring():
  config = testing.tiny_config()
  model = t5.T5(config)
  params = testing.init_params(config, seed=6)
  enc = _inputs(config, seed=4)
  candidates = jnp.asarray([[5, 1, 0], [7, 8, 1], [9, 1, 0], [1, 0, 0]])  # [C, S]
  batch = enc.shape[0]
  prefix = jnp.asarray(np.random.RandomState(1).randn(batch, 2, config.d_model), jnp.float32)
  for hooks in (hooks_lib.NO_HOOKS, hooks_lib.Hooks(prefix={"decoder": prefix})):
    scores = jax.jit(lambda e, c: decoding.rank_classify(model, params, e, c, hooks=hooks))
    got = scores(enc, candidates)
    assert got.shape == (batch, 4)
    if hooks.empty:  # [B, C, S] candidates give the same as shared [C, S] ones
      per_example = jnp.broadcast_to(candidates[None], (batch,) + candidates.shape)
      np.testing.assert_allclose(np.asarray(scores(enc, per_example)), np.asarray(got),
                                 rtol=1e-6, atol=1e-6)
    reference = jax.jit(lambda target: decoding.sequence_log_likelihood(
        model, params, enc, decoding.shift_right(target), target,
        (target != 0).astype(jnp.float32), hooks=hooks))
    for c in range(candidates.shape[0]):
      want = reference(jnp.broadcast_to(candidates[c], (batch, candidates.shape[1])))
      np.testing.assert_allclose(np.asarray(got[:, c]), np.asarray(want), rtol=1e-5,
                                 atol=1e-5)
  with pytest.raises(ValueError, match="candidate_targets must be"):
    decoding.rank_classify(model, params, enc, candidates[None, None])
