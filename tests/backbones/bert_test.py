"""bert: parity with transformers (real all-MiniLM-L6-v2 weights and random
RoBERTa / BERT layouts), hooks, sharding.

Dimension letters: B batch, T length, P prompt / prefix length, H hidden,
N heads, D head dim, L layers, C classes.
"""
import csv
import dataclasses
import functools

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptuning_jax.backbones import bert
from ptuning_jax import testing
from ptuning_jax.models import heads
from ptuning_jax.backbones.hf import bert as hf_bert
from ptuning_jax import gin_utils
from ptuning_jax import hooks as hooks_lib
from ptuning_jax.training import partitioning

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Varied lengths, case, punctuation, accents and a rare word (several pieces).
SENTENCES = [
    "The movie was great!",
    "I did not like it at all.",
    "A quiet, thoughtful film that rewards patience.",
    "Terrible.",
    "Antidisestablishmentarianism is a long word.",
    "She said: \"Don't go there\" -- and left.",
    "Café au lait costs 3.50 euros in Paris.",
    "It's neither here nor there, honestly.",
    "What a waste of two hours; the plot makes no sense whatsoever.",
    "OK",
    "The acting, costumes and music are all astounding given the budget.",
    "Numbers like 1,234,567 and dates like 2021-05-04 appear too.",
    "a b c d e f g",
    "Unbelievably, the sequel is better than the original.",
    "Why?",
    "He reads books about naïve physics every evening before bed.",
]


def _hf_inputs(enc):
  return {k: torch.tensor(np.asarray(v)) for k, v in enc.items()}


def _our_states(config, params, input_ids, mask, types=None, hooks=bert.NO_HOOKS):
  states, out_mask = bert.BertEncoder(config).apply(
      {"params": params}, jnp.asarray(input_ids), jnp.asarray(mask),
      None if types is None else jnp.asarray(types), hooks=hooks,
      method=bert.BertEncoder.hidden_states)
  return np.stack([np.asarray(s) for s in states]), np.asarray(out_mask)


def _hf_states(model, **inputs):
  with torch.no_grad():
    out = model(**{k: torch.as_tensor(v) for k, v in inputs.items()},
                output_hidden_states=True)
  return np.stack([h.numpy() for h in out.hidden_states]), out


def _assert_close_attended(ours, theirs, mask, atol=1e-4):
  """ours/theirs [L + 1, B, T, H]; compares the attended positions."""
  assert ours.shape == theirs.shape
  keep = np.asarray(mask, bool)[None, :, :, None]
  np.testing.assert_allclose(np.where(keep, ours, 0), np.where(keep, theirs, 0),
                             atol=atol, rtol=0)


# ------------------------------- real weights --------------------------------


@pytest.fixture(scope="module")
def minilm_dir():
  try:
    return hf_bert.all_minilm_l6_v2_dir()
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  return hf_bert.load_checkpoint(minilm_dir)


@pytest.fixture(scope="module")
def hf_minilm(minilm_dir):
  return transformers.AutoModel.from_pretrained(
      str(minilm_dir), attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_dir):
  return transformers.AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def sst2_sentences(shared_data):
  with open(shared_data / "glue" / "sst2" / "dev.tsv") as f:
    rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  return [r["sentence"] for r in rows[:16]]


def _check_minilm_parity(minilm, hf_minilm, hf_tokenizer, sentences):
  config, params = minilm
  enc = hf_tokenizer(sentences, padding=True, return_tensors="np")
  lengths = enc["attention_mask"].sum(1)
  assert len(set(lengths.tolist())) > 3, "the batch must mix lengths (padding)"
  ours, _ = _our_states(config, params, enc["input_ids"], enc["attention_mask"],
                        enc["token_type_ids"])
  theirs, out = _hf_states(hf_minilm, **_hf_inputs(enc))
  assert ours.shape == (7, len(sentences), enc["input_ids"].shape[1], 384)
  _assert_close_attended(ours, theirs, enc["attention_mask"])
  pooled = bert.BertEncoder(config).apply({"params": params}, jnp.asarray(ours[-1][:, 0]),
                                          method=bert.BertEncoder.pool)
  np.testing.assert_allclose(pooled, out.pooler_output.numpy(), atol=1e-4, rtol=0)


def test_minilm_parity_builtin_sentences(minilm, hf_minilm, hf_tokenizer):
  _check_minilm_parity(minilm, hf_minilm, hf_tokenizer, SENTENCES)


def test_minilm_parity_sst2_sentences(minilm, hf_minilm, hf_tokenizer, sst2_sentences):
  _check_minilm_parity(minilm, hf_minilm, hf_tokenizer, sst2_sentences)


def test_minilm_parity_at_padded_positions_in_float64(minilm_dir, hf_tokenizer):
  """Every position, padding included, in float64.

  Padded queries of this checkpoint are ill-conditioned in float32: HF's own
  eager and sdpa float32 outputs differ there by ~1e-4, and both differ from
  float64 by ~1e-4. In float64 the whole computation must agree.
  """
  enc = hf_tokenizer(SENTENCES, padding=True, return_tensors="np")
  hf64 = transformers.AutoModel.from_pretrained(
      str(minilm_dir), attn_implementation="eager", dtype=torch.float64).eval()
  theirs, _ = _hf_states(hf64, **_hf_inputs(enc))
  with jax.enable_x64(True):
    config, params = hf_bert.load_checkpoint(
        minilm_dir, dtype="float64", param_dtype="float64")
    ours, _ = _our_states(config, params, enc["input_ids"], enc["attention_mask"],
                          enc["token_type_ids"])
  assert ours.dtype == np.float64 and (enc["attention_mask"] == 0).sum() > 50
  np.testing.assert_allclose(ours, theirs, atol=1e-9, rtol=0)


def test_bfloat16_policy_tracks_float32(minilm_dir, minilm, hf_tokenizer):
  """bf16 weights and activations (LayerNorm / softmax in float32): the output
  is bf16 and within bf16 rounding of the float32 model (8 mantissa bits)."""
  config, params = minilm
  enc = hf_tokenizer(SENTENCES[:4], padding=True, return_tensors="np")
  ids, mask = enc["input_ids"], enc["attention_mask"]
  config16 = dataclasses.replace(config, dtype="bfloat16", param_dtype="bfloat16")
  params16 = hf_bert.load_params(minilm_dir, config16)
  assert {x.dtype for x in jax.tree.leaves(params16)} == {jnp.dtype(jnp.bfloat16)}
  out16 = bert.BertEncoder(config16).apply({"params": params16}, ids, mask)
  out32 = np.asarray(bert.BertEncoder(config).apply({"params": params}, ids, mask))
  assert out16.dtype == jnp.bfloat16
  out16 = np.asarray(out16, np.float32)
  keep = mask[..., None].astype(bool)
  assert np.abs(np.where(keep, out16 - out32, 0)).max() < 0.02 * np.abs(out32).max()
  cosine = np.sum(out16[:, 0] * out32[:, 0], -1) / (
      np.linalg.norm(out16[:, 0], axis=-1) * np.linalg.norm(out32[:, 0], axis=-1))
  assert cosine.min() > 0.999


def test_minilm_has_no_mlm_head_and_says_so(minilm):
  config, params = minilm
  assert not config.with_mlm_head and config.with_pooler
  model = bert.BertEncoder(config)
  with pytest.raises(ValueError, match="no masked-LM head.*all-MiniLM-L6-v2"):
    bert.mlm_fn(model, params)
  with pytest.raises(ValueError, match="no masked-LM head"):
    model.apply({"params": params}, jnp.zeros((1, 384)), method=bert.BertEncoder.mlm_logits)


# ------------------------------ random layouts -------------------------------


@functools.lru_cache(maxsize=None)
def _load(path):
  """(config, params) of a tiny checkpoint, loaded once per module."""
  return hf_bert.load_checkpoint(path)


_batch = testing.padded_ids


def test_tiny_roberta_parity_with_position_offsets(tiny_roberta):
  path, hf_model = tiny_roberta
  config, params = _load(path)
  assert config.position_offset == 2 and config.with_mlm_head and not config.with_pooler
  ids, mask = _batch(97, [9, 4, 7, 1], 9, pad_id=1, left=(2,))
  ours, _ = _our_states(config, params, ids, mask)
  theirs, out = _hf_states(hf_model, input_ids=ids, attention_mask=mask)
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  logits = bert.BertEncoder(config).apply({"params": params}, jnp.asarray(ours[-1]),
                                          method=bert.BertEncoder.mlm_logits)
  np.testing.assert_allclose(logits, out.logits.numpy(), atol=1e-4, rtol=0)


def test_tiny_bert_parity_with_segments_pooler_and_mlm(tiny_bert):
  path, hf_model = tiny_bert
  config, params = _load(path)
  assert config.hidden_act == "relu" and config.with_pooler and config.with_mlm_head
  ids, mask = _batch(89, [11, 6, 9], 11, pad_id=0, seed=1)
  types = np.random.default_rng(2).integers(0, 3, ids.shape)
  ours, _ = _our_states(config, params, ids, mask, types)
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   token_type_ids=torch.tensor(types), output_hidden_states=True)
  np.testing.assert_allclose(ours, np.stack([h.numpy() for h in out.hidden_states]),
                             atol=1e-4, rtol=0)
  model = bert.BertEncoder(config)
  logits = model.apply({"params": params}, jnp.asarray(ours[-1]),
                       method=bert.BertEncoder.mlm_logits)
  np.testing.assert_allclose(logits, out.prediction_logits.numpy(), atol=1e-4, rtol=0)
  subset = model.apply({"params": params}, jnp.asarray(ours[-1]), jnp.asarray([5, 7]),
                       method=bert.BertEncoder.mlm_logits)
  np.testing.assert_allclose(subset, out.prediction_logits.numpy()[..., [5, 7]],
                             atol=1e-4, rtol=0)
  with torch.no_grad():
    pooled = hf_model.bert.pooler(out.hidden_states[-1]).numpy()
  np.testing.assert_allclose(
      model.apply({"params": params}, jnp.asarray(ours[-1][:, 0]),
                  method=bert.BertEncoder.pool), pooled, atol=1e-5, rtol=0)


# ----------------------------------- hooks -----------------------------------


def test_empty_hooks_are_bit_identical(tiny_bert):
  config, params = _load(tiny_bert[0])
  ids, mask = _batch(89, [8, 5], 8, pad_id=0)
  types = np.ones_like(ids)
  model = bert.BertEncoder(config)
  plain = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask),
                      jnp.asarray(types))
  for hk in (bert.NO_HOOKS, hooks_lib.Hooks(), hooks_lib.Hooks(kv_prefixes={}, scales={})):
    out = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask),
                      jnp.asarray(types), hooks=hk)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))


def _prefix_hook(prompt):
  def encoder_inputs(x, tokens, mask):
    del tokens
    tiled = jnp.broadcast_to(prompt[None], (x.shape[0],) + prompt.shape)  # [B, P, H]
    return (jnp.concatenate([tiled.astype(x.dtype), x], 1),
            jnp.concatenate([jnp.ones(tiled.shape[:2], mask.dtype), mask], 1))
  return hooks_lib.Hooks(inputs={"encoder": encoder_inputs})


def test_prompt_prefix_matches_peft_inputs_embeds_on_minilm(minilm, hf_minilm,
                                                            hf_tokenizer):
  """PEFT prompt tuning on BERT: inputs_embeds = prompt ⊕ word embeddings,
  token types zero-padded, mask one-padded; prompts get positions 0..P-1."""
  config, params = minilm
  pairs = [("A man is playing a guitar.", "Someone plays music."),
           ("The cat sleeps.", "A dog is barking loudly at the mailman."),
           ("Hello", "World")]
  enc = hf_tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True,
                     return_tensors="np")
  assert enc["token_type_ids"].max() == 1
  prompt = np.random.default_rng(0).normal(0, 0.05, (5, 384)).astype(np.float32)
  ours, mask = _our_states(config, params, enc["input_ids"], enc["attention_mask"],
                           enc["token_type_ids"], hooks=_prefix_hook(jnp.asarray(prompt)))
  batch = len(pairs)
  with torch.no_grad():
    words = hf_minilm.embeddings.word_embeddings(torch.tensor(enc["input_ids"]))
    embeds = torch.cat([torch.tensor(prompt).expand(batch, -1, -1), words], 1)
  zeros = np.zeros((batch, 5), np.int64)
  theirs, _ = _hf_states(
      hf_minilm, inputs_embeds=embeds,
      attention_mask=np.concatenate([zeros + 1, enc["attention_mask"]], 1),
      token_type_ids=np.concatenate([zeros, enc["token_type_ids"]], 1))
  np.testing.assert_array_equal(mask, np.concatenate([zeros + 1, enc["attention_mask"]], 1))
  _assert_close_attended(ours, theirs, mask)


def test_prompt_prefix_roberta_positions_follow_the_prompt(tiny_roberta):
  path, hf_model = tiny_roberta
  config, params = _load(path)
  ids, mask = _batch(97, [9, 4, 6], 9, pad_id=1, seed=3)
  prompt = np.random.default_rng(4).normal(0, 0.5, (3, 36)).astype(np.float32)
  ours, out_mask = _our_states(config, params, ids, mask,
                               hooks=_prefix_hook(jnp.asarray(prompt)))
  with torch.no_grad():
    words = hf_model.roberta.embeddings.word_embeddings(torch.tensor(ids))
    embeds = torch.cat([torch.tensor(prompt).expand(3, -1, -1), words], 1)
  theirs, _ = _hf_states(hf_model.roberta, inputs_embeds=embeds,
                         attention_mask=np.asarray(out_mask, np.int64))
  _assert_close_attended(ours, theirs, out_mask)


def test_suffix_prompt_keeps_the_segment_of_real_tokens(tiny_bert):
  """Prompt appended after segment-1 tokens: those keep type 1, the prompt
  gets type 0, exactly as HF with inputs_embeds and explicit type ids."""
  path, hf_model = tiny_bert
  config, params = _load(path)
  ids, mask = _batch(89, [7, 7], 7, pad_id=0, seed=5)
  types = np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 2, 2, 2]])
  prompt = np.random.default_rng(6).normal(0, 0.5, (4, 20)).astype(np.float32)

  def append(x, tokens, m):
    del tokens
    tiled = jnp.broadcast_to(jnp.asarray(prompt)[None], (2, 4, 20))
    return jnp.concatenate([x, tiled], 1), jnp.concatenate([m, jnp.ones((2, 4), bool)], 1)

  ours, _ = _our_states(config, params, ids, mask, types,
                        hooks=hooks_lib.Hooks(inputs={"encoder": append}))
  with torch.no_grad():
    words = hf_model.bert.embeddings.word_embeddings(torch.tensor(ids))
    embeds = torch.cat([words, torch.tensor(prompt).expand(2, -1, -1)], 1)
  theirs, _ = _hf_states(hf_model.bert, inputs_embeds=embeds,
                         attention_mask=np.ones((2, 11), np.int64),
                         token_type_ids=np.concatenate([types, np.zeros((2, 4), int)], 1))
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def _tiny_inputs(seed=7):
  ids, mask = _batch(89, [8, 5, 3], 8, pad_id=0, seed=seed)
  return ids, mask, np.random.default_rng(seed).integers(0, 3, ids.shape)


def test_kv_prefixes_match_hf_key_value_cache(tiny_bert):
  """P-Tuning v2 deep prompts = HF past keys/values, always attended.

  HF shifts position ids by the cache length; our prefixes are not part of
  the sequence, so HF gets explicit positions 0..T-1 here.
  """
  path, hf_model = tiny_bert
  config, params = _load(path)
  ids, mask, types = _tiny_inputs()
  rng = np.random.default_rng(8)
  key, value = (rng.normal(size=(2, 3, 4, 4, 5)).astype(np.float32) for _ in range(2))
  cache = transformers.DynamicCache(config=hf_model.config)
  for i in range(2):  # HF layout [B, N, P, D]
    cache.update(torch.tensor(key[i]).permute(0, 2, 1, 3),
                 torch.tensor(value[i]).permute(0, 2, 1, 3), i)
  with torch.no_grad():
    out = hf_model.bert(
        input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
        attention_mask=torch.tensor(np.concatenate([np.ones((3, 4), int), mask], 1)),
        position_ids=torch.arange(8)[None].expand(3, 8), cache=cache)
  hk = hooks_lib.Hooks(kv_prefixes={"encoder/self": hooks_lib.KVPrefix(
      jnp.asarray(key), jnp.asarray(value))})
  ours, _ = _our_states(config, params, ids, mask, types, hooks=hk)
  np.testing.assert_allclose(ours[-1], out.last_hidden_state.numpy(), atol=1e-4, rtol=0)
  plain, _ = _our_states(config, params, ids, mask, types)
  assert np.abs(plain[-1] - ours[-1]).max() > 1e-2


def test_scales_and_layer_inputs_match_hf_forward_hooks(tiny_bert):
  """(IA)^3: keys / values after their projection (bias included), the MLP
  activation; layer_inputs: values[l] added to the input of every layer l."""
  path, hf_model = tiny_bert
  config, params = _load(path)
  ids, mask, types = _tiny_inputs(seed=9)
  rng = np.random.default_rng(10)
  k, v = (rng.uniform(0.5, 1.5, (2, 20)).astype(np.float32) for _ in range(2))
  mlp = rng.uniform(0.5, 1.5, (2, 28)).astype(np.float32)
  delta = rng.normal(0, 0.3, (2, 20)).astype(np.float32)

  def scale_output(s):
    return lambda module, args, output: output * torch.tensor(s)

  def add_input(d):
    def pre(module, args, kwargs):
      return (args[0] + torch.tensor(d),) + tuple(args[1:]), kwargs
    return pre

  handles = []
  for i, layer in enumerate(hf_model.bert.encoder.layer):
    handles.append(layer.attention.self.key.register_forward_hook(scale_output(k[i])))
    handles.append(layer.attention.self.value.register_forward_hook(scale_output(v[i])))
    handles.append(layer.intermediate.register_forward_hook(scale_output(mlp[i])))
    handles.append(layer.register_forward_pre_hook(add_input(delta[i]), with_kwargs=True))
  try:
    with torch.no_grad():
      out = hf_model.bert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          token_type_ids=torch.tensor(types))
  finally:
    for h in handles:
      h.remove()
  seen = []

  def add(value, x, m):
    seen.append(m.shape)
    return x + value

  hk = hooks_lib.Hooks(
      scales={"encoder/self/k": jnp.asarray(k), "encoder/self/v": jnp.asarray(v),
              "encoder/mlp": jnp.asarray(mlp)},
      layer_inputs={"encoder": hooks_lib.LayerInputs(jnp.asarray(delta), add)})
  ours, _ = _our_states(config, params, ids, mask, types, hooks=hk)
  np.testing.assert_allclose(ours[-1], out.last_hidden_state.numpy(), atol=1e-4, rtol=0)
  assert seen == [(3, 8)] * 2


@pytest.mark.parametrize("hooks, match", [
    (lambda: hooks_lib.Hooks(kv_prefixes={"encoder/self": hooks_lib.KVPrefix(
        jnp.zeros((2, 1, 3, 4, 6)), jnp.zeros((2, 1, 3, 4, 6)))}), r"D=5"),
    (lambda: hooks_lib.Hooks(kv_prefixes={"decoder/self": hooks_lib.KVPrefix(
        jnp.zeros((2, 1, 3, 4, 5)), jnp.zeros((2, 1, 3, 4, 5)))}),
     r"no attention site 'decoder/self'; it has \['encoder/self'\]"),
    (lambda: hooks_lib.Hooks(scales={"encoder/mlp": jnp.ones((2, 20))}), r"\[L, W\] = \(2, 28\)"),
    (lambda: hooks_lib.Hooks(scales={"decoder/mlp": jnp.ones((2, 28))}), "no stack 'decoder'"),
    (lambda: hooks_lib.Hooks(inputs={"encoder": lambda x, t, m: (x[..., :3], m)}), "H=20"),
    (lambda: hooks_lib.Hooks(layer_inputs={"encoder": hooks_lib.LayerInputs(
        jnp.zeros((2,)), lambda v, x, m: x[:, :2])}), "keep the hidden"),
])
def test_bad_hooks_raise_clear_errors(tiny_bert, hooks, match):
  config, params = _load(tiny_bert[0])
  ids, mask, types = _tiny_inputs()
  with pytest.raises(ValueError, match=match):
    _our_states(config, params, ids, mask, types, hooks=hooks())


def test_too_long_input_raises():
  config = bert.BertConfig(vocab_size=11, hidden_size=8, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=8,
                           max_position_embeddings=6, pad_token_id=1, position_offset=2)
  params = bert.init_params(config)
  ids = np.full((1, 5), 4)
  with pytest.raises(ValueError, match="exceeds the 4 positions"):
    bert.BertEncoder(config).apply({"params": params}, ids, np.ones_like(ids))


def test_dropout_is_active_only_when_not_deterministic(tiny_bert):
  config, params = _load(tiny_bert[0])
  ids, mask, types = _tiny_inputs()
  model = bert.BertEncoder(config)
  run = lambda **kw: np.asarray(model.apply({"params": params}, ids, mask, types, **kw))
  a = run(deterministic=False, rngs={"dropout": jax.random.key(0)})
  b = run(deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert np.abs(a - b).max() > 1e-3
  np.testing.assert_array_equal(run(), run(deterministic=True))


def test_remat_gives_the_same_output_and_gradients(tiny_bert):
  config, params = _load(tiny_bert[0])
  ids, mask, types = _tiny_inputs()

  weights = jax.random.normal(jax.random.key(0), (3, 8, 20)) / 480  # a mean

  def loss(p, cfg):
    return jnp.sum(bert.BertEncoder(cfg).apply({"params": p}, ids, mask, types) * weights)

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  full = grad(params, config)
  remat = grad(params, dataclasses.replace(config, remat_policy="full"))
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(remat)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


# --------------------------------- sharding ----------------------------------


def _sharded_forward(path, config, ids, mask, types, mesh, rules):
  params = hf_bert.load_params(path, config, mesh=mesh, rules=rules)
  model = bert.BertEncoder(config)
  site = bert.hook_spec(config).site("encoder/self")
  shape = site.kv_shape(2)
  prefix = hooks_lib.KVPrefix(*(jnp.full(shape[:1] + (1,) + shape[1:], c)
                                for c in (0.1, -0.2)))
  hk = hooks_lib.Hooks(kv_prefixes={"encoder/self": prefix})
  fn = jax.jit(lambda p, i, m, t: model.apply({"params": p}, i, m, t, hooks=hk))
  with partitioning.activate(mesh, rules):
    out = fn(params, *(jax.device_put(x, partitioning.data_sharding(mesh))
                       for x in (ids, mask, types)))
  return params, np.asarray(out), hk


@pytest.mark.parametrize("shape", [(8, 1), (2, 4)])
def test_sharded_minilm_forward_equals_unsharded(minilm_dir, minilm, hf_tokenizer, shape):
  config, params = minilm
  enc = hf_tokenizer(SENTENCES, padding=True, return_tensors="np")
  ids, mask, types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
  mesh = partitioning.make_mesh(*shape)
  rules = partitioning.standard_logical_axis_rules()
  sharded_params, out, hk = _sharded_forward(minilm_dir, config, ids, mask, types,
                                             mesh, rules)
  query = sharded_params["layers_0"]["attention"]["query"]["kernel"]
  assert query.sharding.spec == jax.sharding.PartitionSpec(None, "model", None)
  assert query.addressable_shards[0].data.shape == (384, 12 // shape[1], 32)
  # 30522 rows do not split 4 ways: the table is replicated instead.
  words = sharded_params["embeddings"]["word_embeddings"]
  assert words.addressable_shards[0].data.shape == (30522, 384)
  expected = bert.BertEncoder(config).apply({"params": params}, ids, mask, types, hooks=hk)
  # Attended positions only: padded queries of this checkpoint are
  # ill-conditioned in float32 (see the float64 test); a different fusion or
  # summation order alone moves them by ~3e-5.
  keep = mask[..., None].astype(bool)
  np.testing.assert_allclose(np.where(keep, out, 0), np.where(keep, expected, 0),
                             atol=1e-5, rtol=0)


def test_sharded_tiny_model_with_sharded_vocab(tmp_path):
  """Standard rules (vocab over `model`) on a model whose dims divide."""
  hf_config = transformers.BertConfig(
      vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=48, max_position_embeddings=16, type_vocab_size=2)
  torch.manual_seed(0)
  testing.randomize_torch(transformers.BertForMaskedLM(hf_config), 3).save_pretrained(tmp_path)
  config, params = hf_bert.load_checkpoint(tmp_path)
  ids, mask = _batch(64, [8, 5, 3, 8, 1, 2, 6, 7], 8, pad_id=0)
  types = np.zeros_like(ids)
  mesh = partitioning.make_mesh(2, 4)
  rules = partitioning.standard_logical_axis_rules()
  sharded, out, hk = _sharded_forward(tmp_path, config, ids, mask, types, mesh, rules)
  words = sharded["embeddings"]["word_embeddings"]
  assert words.sharding.spec[0] == "model"
  assert words.addressable_shards[0].data.shape == (16, 32)
  expected = bert.BertEncoder(config).apply({"params": params}, ids, mask, types, hooks=hk)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_every_logical_axis_is_covered_by_the_rules():
  config = bert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=24,
                           max_position_embeddings=20, with_mlm_head=True)
  dummy = jnp.ones((1, 3), jnp.int32)
  boxed = jax.eval_shape(lambda: bert.BertEncoder(config).init(
      jax.random.key(0), dummy, dummy)["params"])
  head = jax.eval_shape(lambda: heads.ClassificationHead(3).init(
      jax.random.key(0), jnp.ones((1, 3, 16)), dummy)["params"])
  rules = partitioning.standard_logical_axis_rules()
  for tree in (boxed, head):
    specs = nn.get_partition_spec(tree)
    assert partitioning.uncovered_axes(specs, rules) == set()
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.Partitioned) for x in leaves)  # every param annotated
  count = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(boxed)))
  assert count == bert.num_params(config)
  assert set(boxed) == {"embeddings", "layers_0", "layers_1", "pooler", "mlm_head"}


def test_hook_spec_and_config_validation():
  config = bert.BertConfig(hidden_size=48, num_attention_heads=6, intermediate_size=100,
                           num_hidden_layers=3)
  spec = bert.hook_spec(config)
  assert (spec.family, spec.embed_dim, spec.input_stack) == ("bert", 48, "encoder")
  assert spec.attention_sites == ("encoder/self",)
  site = spec.site("encoder/self")
  assert (site.num_layers, site.num_heads, site.num_kv_heads, site.head_dim,
          site.positions) == (3, 6, 6, 8, "absolute")
  assert spec.scale_sites == ("encoder/self/k", "encoder/self/v", "encoder/mlp")
  assert spec.scale_shape("encoder/mlp") == (3, 100)
  with pytest.raises(ValueError, match="not divisible"):
    bert.BertConfig(hidden_size=50, num_attention_heads=6)
  with pytest.raises(ValueError, match="hidden_act='silu'"):
    bert.BertConfig(hidden_act="silu")


def test_gin_file_builds_the_minilm_config(minilm):
  gin_utils.parse(["gin/models/bert.gin"], [])
  try:
    assert gin_utils.call(bert.BertConfig) == minilm[0]
  finally:
    gin.clear_config()


# ----------------------------------- heads -----------------------------------
