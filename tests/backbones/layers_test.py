"""Tests of ptuning_jax.backbones.layers against numpy references (and HF where exact)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptuning_jax.backbones import layers

B, Q, K, H, N, D, F = 2, 4, 6, 12, 3, 5, 20


def _rng(seed=0):
  return np.random.RandomState(seed)


def _init_apply(module, *args, **kwargs):
  variables = module.init(jax.random.PRNGKey(0), *args, **kwargs)
  params = nn.meta.unbox(variables["params"])
  return params, module.apply({"params": params}, *args, **kwargs)


# ---------------------------------------------------------------- RMSNorm ----


def test_rms_norm_matches_numpy_float32_statistics():
  x = _rng().randn(B, Q, H).astype(np.float32) * 3
  module = layers.RMSNorm(epsilon=1e-6)
  params, y = _init_apply(module, jnp.asarray(x))
  scale = _rng(1).randn(H).astype(np.float32)
  y = module.apply({"params": {"scale": jnp.asarray(scale)}}, jnp.asarray(x))
  want = x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
  assert params["scale"].shape == (H,)


def test_rms_norm_bf16_compute_keeps_float32_statistics():
  # Values whose squares overflow bfloat16's precision badly if summed there.
  x = (_rng().randn(B, Q, H) * 100).astype(np.float32)
  x_bf16 = jnp.asarray(x, jnp.bfloat16)
  module = layers.RMSNorm(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  _, y = _init_apply(module, x_bf16)
  assert y.dtype == jnp.bfloat16
  x32 = np.asarray(x_bf16, np.float32)
  want = x32 / np.sqrt(np.mean(x32 ** 2, -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=1e-2, atol=1e-2)


def test_rms_norm_partitioning_axes():
  boxed = layers.RMSNorm().init(jax.random.PRNGKey(0), jnp.ones((1, 1, H)))
  assert nn.get_partition_spec(boxed)["params"]["scale"] == jax.sharding.PartitionSpec("embed")


# ----------------------------------------------------------- DenseGeneral ----


def test_dense_general_multi_axis_contraction_and_axes():
  x = _rng().randn(B, Q, N, D).astype(np.float32)
  module = layers.DenseGeneral(features=(H,), num_in=2, kernel_axes=("heads", "kv", "embed"))
  boxed = module.init(jax.random.PRNGKey(0), jnp.asarray(x))
  assert nn.get_partition_spec(boxed)["params"]["kernel"] == jax.sharding.PartitionSpec(
      "heads", "kv", "embed")
  kernel = np.asarray(nn.meta.unbox(boxed)["params"]["kernel"])
  assert kernel.shape == (N, D, H)
  y = module.apply(nn.meta.unbox(boxed), jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), np.einsum("bqnd,ndh->bqh", x, kernel),
                             rtol=1e-5, atol=1e-5)


def test_dense_general_dtypes():
  module = layers.DenseGeneral(features=(7,), kernel_axes=("embed", "vocab"),
                               dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                               output_dtype=jnp.float32)
  params, y = _init_apply(module, jnp.ones((B, Q, H), jnp.float32))
  assert params["kernel"].dtype == jnp.bfloat16
  assert y.dtype == jnp.float32


def test_dense_general_rejects_wrong_axis_count():
  module = layers.DenseGeneral(features=(N, D), kernel_axes=("embed", "heads"))
  with pytest.raises(ValueError, match="axis names"):
    module.init(jax.random.PRNGKey(0), jnp.ones((B, Q, H)))


# ------------------------------------------------------------------ Embed ----


def test_embed_lookup_and_attend():
  module = layers.Embed(num_embeddings=11, features=H)
  tokens = jnp.asarray([[1, 2, 10], [0, 0, 3]])
  params, x = _init_apply(module, tokens)
  table = np.asarray(params["embedding"])
  np.testing.assert_array_equal(np.asarray(x), table[np.asarray(tokens)])
  h = _rng().randn(B, 3, H).astype(np.float32)
  logits = module.apply({"params": params}, jnp.asarray(h), method=module.attend)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), h @ table.T, rtol=1e-5, atol=1e-5)


def test_embed_rejects_float_tokens():
  module = layers.Embed(num_embeddings=11, features=H)
  with pytest.raises(TypeError, match="integers"):
    module.init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.float32))


# ------------------------------------------------------ relative positions ----


def test_relative_position_buckets_known_values():
  bucket = lambda r, bi: int(layers.relative_position_buckets(
      np.asarray(r), bidirectional=bi, num_buckets=32, max_distance=128))
  # Bidirectional: 16 buckets per side, 8 exact; keys after the query use 16+.
  assert [bucket(r, True) for r in (0, -1, -7, 1, 7)] == [0, 1, 7, 17, 23]
  assert bucket(-10 ** 6, True) == 15 and bucket(10 ** 6, True) == 31
  # Causal: all 32 buckets for the past, 16 exact; the future is bucket 0.
  assert [bucket(r, False) for r in (0, -1, -15, 5)] == [0, 1, 15, 0]
  assert bucket(-10 ** 6, False) == 31


def test_relative_position_buckets_match_hf_exactly():
  torch = pytest.importorskip("torch")
  modeling_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
  rel = np.concatenate([np.arange(-300, 300), [-5000, -1001, -1000, 999, 1000, 4999]])
  for num_buckets in (4, 6, 8, 10, 16, 32, 64, 128):
    for max_distance in (9, 20, 32, 100, 128, 256, 1000):
      for bidirectional in (True, False):
        if max_distance <= num_buckets // 2:
          continue
        want = modeling_t5.T5Attention._relative_position_bucket(
            torch.tensor(rel), bidirectional=bidirectional,
            num_buckets=num_buckets, max_distance=max_distance).numpy()
        got = layers.relative_position_buckets(
            rel, bidirectional=bidirectional, num_buckets=num_buckets,
            max_distance=max_distance)
        np.testing.assert_array_equal(got, want, err_msg=str(
            (num_buckets, max_distance, bidirectional)))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bias_offset_path_matches_static(bidirectional):
  module = layers.RelativePositionBias(num_buckets=8, max_distance=20, num_heads=N,
                                       bidirectional=bidirectional)
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), 3, 30)["params"])
  full = module.apply({"params": params}, 30, 30)  # [1, N, 30, 30]
  assert full.shape == (1, N, 30, 30) and full.dtype == jnp.float32
  offset = jax.jit(lambda o: module.apply({"params": params}, 3, 30, q_offset=o))
  for start in (0, 7, 27):
    np.testing.assert_array_equal(np.asarray(offset(jnp.int32(start))),
                                  np.asarray(full[:, :, start:start + 3]))
  table = np.asarray(params["rel_embedding"])  # [R, N]
  rel = np.arange(30)[None] - np.arange(30)[:, None]
  buckets = layers.relative_position_buckets(rel, bidirectional=bidirectional,
                                             num_buckets=8, max_distance=20)
  np.testing.assert_array_equal(np.asarray(full[0]), table[buckets].transpose(2, 0, 1))


# -------------------------------------------------------------- attention ----


def _reference_attention(xq, xkv, params, bias, mask, prefix=None):
  q = np.einsum("bqh,hnd->bqnd", xq, params["query"]["kernel"])
  k = np.einsum("bkh,hnd->bknd", xkv, params["key"]["kernel"])
  v = np.einsum("bkh,hnd->bknd", xkv, params["value"]["kernel"])
  scores = np.einsum("bqnd,bknd->bnqk", q, k)  # no 1/sqrt(D) in T5
  if bias is not None:
    scores = scores + bias
  if mask is not None:
    scores = np.where(mask, scores, -np.inf)
  if prefix is not None:
    pk, pv = prefix
    pscores = np.einsum("bqnd,bpnd->bnqp", q, pk)
    scores = np.concatenate([pscores, scores], -1)
    v = np.concatenate([pv, v], 1)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs = probs / probs.sum(-1, keepdims=True)
  out = np.einsum("bnqk,bknd->bqnd", probs, v)
  return np.einsum("bqnd,ndh->bqh", out, params["out"]["kernel"])


def _attention_case(seed=0):
  rng = _rng(seed)
  xq = rng.randn(B, Q, H).astype(np.float32)
  xkv = rng.randn(B, K, H).astype(np.float32)
  bias = rng.randn(1, N, Q, K).astype(np.float32)
  mask = np.ones((B, 1, 1, K), bool)
  mask[1, ..., 4:] = False
  module = layers.MultiHeadAttention(num_heads=N, head_dim=D)
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(seed), xq, xkv, bias, mask)["params"])
  return module, params, xq, xkv, bias, mask


def test_attention_matches_numpy_reference():
  module, params, xq, xkv, bias, mask = _attention_case()
  got = module.apply({"params": params}, xq, xkv, bias, mask)
  want = _reference_attention(xq, xkv, jax.tree_util.tree_map(np.asarray, params), bias, mask)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_attention_kv_prefix_matches_reference_and_broadcasts():
  module, params, xq, xkv, bias, mask = _attention_case()
  rng = _rng(5)
  pk = rng.randn(1, 2, N, D).astype(np.float32)
  pv = rng.randn(1, 2, N, D).astype(np.float32)
  got = module.apply({"params": params}, xq, xkv, bias, mask, (pk, pv))
  want = _reference_attention(xq, xkv, jax.tree_util.tree_map(np.asarray, params), bias,
                              mask, (np.repeat(pk, B, 0), np.repeat(pv, B, 0)))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  tiled = module.apply({"params": params}, xq, xkv, bias, mask,
                       (np.repeat(pk, B, 0), np.repeat(pv, B, 0)))
  np.testing.assert_array_equal(np.asarray(tiled), np.asarray(got))
  assert np.abs(np.asarray(got) - np.asarray(
      module.apply({"params": params}, xq, xkv, bias, mask))).max() > 1e-3


def test_prepend_prefix_extends_bias_and_mask():
  key = jnp.zeros((B, K, N, D))
  prefix = (jnp.ones((1, 3, N, D)), jnp.ones((1, 3, N, D)))
  bias = jnp.full((1, N, Q, K), 2.0)
  mask = jnp.zeros((B, 1, 1, K), bool)
  k, v, b, m = layers._prepend_prefix(prefix, key, key, bias, mask, Q, jnp.float32)
  assert k.shape == v.shape == (B, 3 + K, N, D)
  assert b.shape == (1, N, Q, 3 + K) and m.shape == (B, 1, Q, 3 + K)
  np.testing.assert_array_equal(np.asarray(b[..., :3]), 0.0)
  np.testing.assert_array_equal(np.asarray(b[..., 3:]), 2.0)
  assert bool(m[..., :3].all()) and not bool(m[..., 3:].any())
  with pytest.raises(ValueError, match=r"kv prefix of shape \(1, 3, 4, 5\)"):
    layers._prepend_prefix((jnp.ones((1, 3, 4, D)),) * 2, key, key, bias, mask, Q,
                           jnp.float32)


def test_attention_scales():
  module, params, xq, xkv, bias, mask = _attention_case()
  plain = module.apply({"params": params}, xq, xkv, bias, mask)
  ones = jnp.ones((N * D,))
  same = module.apply({"params": params}, xq, xkv, bias, mask, None, ones, ones)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(plain))
  s = jnp.asarray(_rng(3).rand(N * D).astype(np.float32) + 0.5)
  scaled = module.apply({"params": params}, xq, xkv, bias, mask, None, s, s)
  folded = jax.tree_util.tree_map(lambda x: x, params)
  for name in ("key", "value"):
    folded[name] = {"kernel": params[name]["kernel"] * s.reshape(N, D)}
  np.testing.assert_allclose(np.asarray(scaled),
                             np.asarray(module.apply({"params": folded}, xq, xkv, bias, mask)),
                             rtol=1e-5, atol=1e-5)


def test_fully_masked_row_is_finite():
  module, params, xq, xkv, bias, mask = _attention_case()
  mask = np.zeros_like(mask)
  out = module.apply({"params": params}, xq, xkv, bias, mask)
  assert np.isfinite(np.asarray(out)).all()


def test_attention_self_cache_steps_match_full_pass():
  rng = _rng(2)
  x = rng.randn(B, K, H).astype(np.float32)
  causal = np.tril(np.ones((K, K), bool))[None, None]
  module = layers.MultiHeadAttention(num_heads=N, head_dim=D)
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), x, x, None, causal)["params"])
  full = module.apply({"params": params}, x, x, None, causal)
  _, state = module.apply({"params": params}, x, x, None, causal, decode_mode="init",
                          mutable=["cache"])
  cache = state["cache"]
  np.testing.assert_array_equal(np.asarray(cache["cached_key"]), 0.0)
  for i in range(K):
    step_mask = (np.arange(K) <= i)[None, None, None]
    out, state = module.apply({"params": params, "cache": cache}, x[:, i:i + 1],
                              x[:, i:i + 1], None, step_mask, decode_mode="step",
                              cache_index=jnp.int32(i), mutable=["cache"])
    cache = state["cache"]
    np.testing.assert_allclose(np.asarray(out[:, 0]), np.asarray(full[:, i]),
                               rtol=1e-5, atol=1e-5)


def test_attention_step_without_cache_raises():
  module, params, xq, xkv, bias, mask = _attention_case()
  with pytest.raises(ValueError, match="cache is missing"):
    module.apply({"params": params}, xq, xq, None, None, decode_mode="step",
                 cache_index=jnp.int32(0), mutable=["cache"])


# -------------------------------------------------------------------- MLP ----


def _np_gelu_new(x):
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


@pytest.mark.parametrize("feed_forward", ["gated-gelu", "relu"])
def test_mlp_matches_numpy(feed_forward):
  x = _rng().randn(B, Q, H).astype(np.float32)
  activation, gated = {"gated-gelu": ("gelu_new", True), "relu": ("relu", False)}[feed_forward]
  module = layers.MlpBlock(d_ff=F, activation=activation, gated=gated)
  params, y = _init_apply(module, jnp.asarray(x))
  p = jax.tree_util.tree_map(np.asarray, params)
  if feed_forward == "gated-gelu":
    hidden = _np_gelu_new(x @ p["wi_0"]["kernel"]) * (x @ p["wi_1"]["kernel"])
  else:
    hidden = np.maximum(x @ p["wi"]["kernel"], 0)
  np.testing.assert_allclose(np.asarray(y), hidden @ p["wo"]["kernel"], rtol=1e-5, atol=1e-5)
  s = _rng(1).rand(F).astype(np.float32)
  scaled = module.apply({"params": params}, jnp.asarray(x), jnp.asarray(s))
  np.testing.assert_allclose(np.asarray(scaled), (hidden * s) @ p["wo"]["kernel"],
                             rtol=1e-5, atol=1e-5)


def test_gelu_new_is_tanh_approximation():
  x = np.linspace(-6, 6, 101).astype(np.float32)
  np.testing.assert_allclose(np.asarray(layers.gelu_new(jnp.asarray(x))), _np_gelu_new(x),
                             rtol=1e-6, atol=1e-6)


def test_mlp_unknown_activation():
  with pytest.raises(ValueError, match="Unknown activation 'swish'"):
    layers.MlpBlock(d_ff=F, activation="swish").init(jax.random.PRNGKey(0),
                                                     jnp.ones((1, 1, H)))


def test_biased_mlp_matches_numpy():
  x = _rng().randn(B, Q, H).astype(np.float32)
  module = layers.MlpBlock(d_ff=F, activation="gelu", gated=False, use_bias=True)
  params, _ = _init_apply(module, jnp.asarray(x))
  rng = _rng(4)
  params = jax.tree_util.tree_map(lambda p: rng.randn(*p.shape).astype(np.float32), params)
  y = module.apply({"params": params}, jnp.asarray(x))
  from scipy.special import erf  # pylint: disable=g-import-not-at-top
  pre = x @ params["wi"]["kernel"] + params["wi"]["bias"]
  hidden = 0.5 * pre * (1 + erf(pre / np.sqrt(2)))
  np.testing.assert_allclose(np.asarray(y), hidden @ params["wo"]["kernel"] + params["wo"]["bias"],
                             rtol=1e-5, atol=1e-5)


def test_layer_norm_matches_numpy():
  x = (_rng().randn(B, Q, H) * 3 + 1).astype(np.float32)
  scale, bias = _rng(1).randn(H).astype(np.float32), _rng(2).randn(H).astype(np.float32)
  y = layers.LayerNorm(epsilon=1e-5).apply({"params": {"scale": scale, "bias": bias}},
                                           jnp.asarray(x))
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(y), (x - mean) / np.sqrt(var + 1e-5) * scale + bias,
                             rtol=1e-5, atol=1e-5)


def _reference_gqa(xq, xkv, p, kv_heads, scale):
  """numpy grouped-query attention: each key/value head serves N / Kh query heads."""
  q = np.einsum("bqh,hnd->bqnd", xq, p["query"]["kernel"])
  k = np.einsum("bkh,hnd->bknd", xkv, p["key"]["kernel"])
  v = np.einsum("bkh,hnd->bknd", xkv, p["value"]["kernel"])
  group = q.shape[2] // kv_heads
  k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
  s = np.einsum("bqnd,bknd->bnqk", q, k) * scale
  s = np.exp(s - s.max(-1, keepdims=True))
  probs = s / s.sum(-1, keepdims=True)
  out = np.einsum("bnqk,bknd->bqnd", probs, v)
  return np.einsum("bqnd,ndh->bqh", out, p["out"]["kernel"])


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_attention_matches_reference(kv_heads):
  rng = _rng(7)
  xq, xkv = rng.randn(B, Q, H).astype(np.float32), rng.randn(B, K, H).astype(np.float32)
  module = layers.MultiHeadAttention(num_heads=4, head_dim=D, num_kv_heads=kv_heads,
                                     score_scale=D ** -0.5)
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), xq, xkv, None, None)["params"])
  assert params["key"]["kernel"].shape == (H, kv_heads, D)
  got = module.apply({"params": params}, xq, xkv, None, None)
  want = _reference_gqa(xq, xkv, jax.tree_util.tree_map(np.asarray, params), kv_heads,
                        D ** -0.5)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  # A key/value prefix has Kh heads too.
  prefix = (rng.randn(1, 2, kv_heads, D).astype(np.float32),) * 2
  assert module.apply({"params": params}, xq, xkv, None, None, prefix).shape == (B, Q, H)
