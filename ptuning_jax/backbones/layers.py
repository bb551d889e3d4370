"""Primitives shared by every backbone family: norms, projections, embeddings,
relative position bias, multi-head attention and the feed-forward block.

Why Flax Linen with logical partitioning:
  * every parameter is created through `nn.with_logical_partitioning` and the
    main activations pass `nn.with_logical_constraint` with `activation_*`
    names, so model code never mentions a device mesh; `partitioning` maps the
    names onto any `(data, model)` mesh (replicated, FSDP, tensor parallel)
    without touching model code. This is the scheme t5x/flaxformer use.
  * a Linen module is a pure function of explicit variable pytrees: the frozen
    backbone is `model.apply({"params": frozen}, ..., hooks=hooks)` with
    `hooks` built from the trainable pytree inside the caller's jit; no
    stateful objects have to be split and merged around `jax.jit`/`grad`.
  * Linen's "cache" collection gives key/value caching for autoregressive
    decoding with no extra plumbing.

One family differs from another by options of these modules, never by a copy:
T5 uses `RMSNorm`, bias-free projections, unscaled scores and a relative
position bias; BERT uses `LayerNorm`, biased projections and 1/sqrt(D)
scores; grouped-query attention (K < N key/value heads) is built in for the
decoder-only families.

Dimension letters:
  B batch, T / S sequence lengths (Q queries, K keys in attention), P prefix
  length, H hidden width, N query heads, Kh key/value heads, G = N / Kh heads
  per key/value head, D head dim, F MLP width, V vocabulary, R relative-position
  buckets.

Dtype policy: parameters are stored in `param_dtype` and cast to `dtype` for
compute; norm statistics, attention scores, the position bias and the softmax
are float32 (float64 when computing in float64); logits are float32.

Attention implementations (`MultiHeadAttention.attention_impl`, one of
`ATTENTION_IMPLS`):
  * "xla": the plain path, einsum + float32 softmax, compiled by XLA. It is
    the reference and the fallback: it handles everything (dropout on the
    probabilities included).
  * "fused_xla": `jax.nn.dot_product_attention(..., implementation="xla")`
    with the module's score scale, the bias as `bias` and the boolean mask as
    `mask`.
  * "cudnn": the same call with `implementation="cudnn"` (cuDNN flash
    attention). Needs a GPU, bfloat16/float16 compute and D a multiple of 8
    up to 128; the bias is cast to the compute dtype. Asking for it anywhere
    else is an error.
  * "auto": "cudnn" where its requirements hold, else "xla".
  The fused kernels carry no dropout: while attention dropout is active
  (`dropout_rate > 0` and not deterministic) every implementation runs the
  "xla" path (logged once), so training with dropout keeps its semantics.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
DType = Any

log = logging.getLogger(__name__)

ATTENTION_IMPLS = ("xla", "fused_xla", "cudnn", "auto")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU
    "gelu_new": lambda x: gelu_new(x),  # tanh approximation (HF "gelu_new")
    "silu": jax.nn.silu,
}

# Masked attention scores. Finite, so a query whose keys are all masked
# (e.g. a fully padded batch row) gets a uniform softmax instead of NaN.
MASKED_SCORE = -1e10

# Logical axis names of the main activations.
BATCH_LENGTH_EMBED = ("activation_batch", "activation_length", "activation_embed")
BATCH_LENGTH_MLP = ("activation_batch", "activation_length", "activation_mlp")
BATCH_LENGTH_VOCAB = ("activation_batch", "activation_length", "activation_vocab")
BATCH_LENGTH_HEADS_KV = ("activation_batch", "activation_length",
                         "activation_heads", "activation_kv")
BATCH_KVLENGTH_HEADS_KV = ("activation_batch", "activation_kv_length",
                           "activation_heads", "activation_kv")
BATCH_KVLENGTH_KVHEADS_KV = ("activation_batch", "activation_kv_length",
                             "activation_kv_heads", "activation_kv")


def constrain(x: Array, names: Sequence[str]) -> Array:
  """`nn.with_logical_constraint`; a no-op without axis rules and a mesh."""
  return nn.with_logical_constraint(x, tuple(names))


def _normal(stddev: float):
  return nn.initializers.normal(stddev=stddev)


def stat_dtype(dtype: DType) -> Any:
  """Dtype of statistics: float32, or wider if the compute dtype is."""
  return jnp.promote_types(dtype, jnp.float32)


def gelu_new(x: Array) -> Array:
  """Tanh-approximate GELU ("gelu_new" in HF), used by T5 1.1's gated MLP."""
  return jax.nn.gelu(x, approximate=True)


def activation(name: str) -> Callable[[Array], Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def remat(cls, policy: str, static_argnums: tuple[int, ...]):
  """`cls` rematerialised with `REMAT_POLICIES[policy]` ("none": `cls`)."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy={policy!r}; expected one of {sorted(REMAT_POLICIES)}.")
  if policy == "none":
    return cls
  return nn.remat(cls, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, float32 statistics.

  Attributes:
    epsilon: added to the mean square.
    dtype: output dtype.
    param_dtype: dtype of the `scale` [H] parameter.
  """
  epsilon: float = 1e-6
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., H] -> [..., H] in `dtype`."""
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        (x.shape[-1],), self.param_dtype)
    x32 = x.astype(stat_dtype(x.dtype))
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * lax.rsqrt(variance + self.epsilon)).astype(self.dtype)
    return y * scale.astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm with `scale` and `bias` [H] ("embed",); float32 statistics.

  Attributes:
    epsilon: added to the variance.
    dtype: output dtype.
    param_dtype: parameter storage dtype.
  """
  epsilon: float = 1e-12
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., H] -> [..., H] in `dtype`."""
    features = (x.shape[-1],)
    scale = self.param("scale", nn.with_logical_partitioning(
        nn.initializers.ones, ("embed",)), features, self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros, ("embed",)), features, self.param_dtype)
    stat = stat_dtype(x.dtype)
    x32 = x.astype(stat)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centered = x32 - mean
    variance = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
    y = centered * lax.rsqrt(variance + self.epsilon)
    y = y * scale.astype(stat) + bias.astype(stat)
    return y.astype(self.dtype)


class DenseGeneral(nn.Module):
  """Linear map from the trailing `num_in` axes to `features`, optional bias.

  The kernel has shape `x.shape[-num_in:] + features` and logical axes
  `kernel_axes` (one name per kernel dimension); the bias has shape
  `features` and the axes `kernel_axes[num_in:]`.

  Attributes:
    features: output feature shape, e.g. `(N, D)` for a query projection.
    kernel_axes: logical names of the kernel dimensions.
    num_in: number of trailing input axes contracted.
    stddev: standard deviation of the normal initializer.
    use_bias: add a bias (zeros at init).
    dtype: compute dtype.
    param_dtype: kernel storage dtype.
    output_dtype: if set, accumulate and return in this dtype (float32 logits).
  """
  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  num_in: int = 1
  stddev: float = 1.0
  use_bias: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  output_dtype: Optional[DType] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., *in_shape] -> [..., *features]."""
    in_shape = tuple(x.shape[-self.num_in:])
    shape = in_shape + tuple(self.features)
    if len(shape) != len(self.kernel_axes):
      raise ValueError(f"{self.name}: kernel shape {shape} needs "
                       f"{len(shape)} axis names, got {self.kernel_axes}.")
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(_normal(self.stddev), self.kernel_axes),
        shape, self.param_dtype)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    contract = (tuple(range(x.ndim - self.num_in, x.ndim)), tuple(range(self.num_in)))
    y = lax.dot_general(x, kernel, (contract, ((), ())),
                        preferred_element_type=self.output_dtype)
    if not self.use_bias:
      return y
    bias = self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros, self.kernel_axes[self.num_in:]),
        tuple(self.features), self.param_dtype)
    return y + bias.astype(y.dtype)


class Embed(nn.Module):
  """Token embedding table `embedding` [V, H], axes ("vocab", "embed").

  Attributes:
    num_embeddings: V.
    features: H.
    dtype: compute dtype of looked-up vectors.
    param_dtype: storage dtype of the table.
  """
  num_embeddings: int
  features: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(_normal(1.0), ("vocab", "embed")),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, tokens: Array) -> Array:
    """tokens: [B, T] int ids -> [B, T, H] in `dtype`."""
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise TypeError(f"Token ids must be integers, got dtype {tokens.dtype}.")
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    """Tied output head. x: [B, S, H] -> logits [B, S, V] float32."""
    return jnp.einsum("bsh,vh->bsv", x.astype(self.dtype),
                      self.embedding.astype(self.dtype),
                      preferred_element_type=jnp.float32)


def relative_position_buckets(relative_position: np.ndarray, *,
                              bidirectional: bool, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """Mesh-TF / HF T5 bucketing of `memory_position - query_position`.

  Computed with numpy in float32, the same operations HF performs in torch,
  so bucket boundaries agree exactly (checked against HF over a wide range)
  and do not depend on an accelerator's `log`.

  Args:
    relative_position: int array of key position minus query position.
    bidirectional: encoder (True) or causal decoder (False) bucketing.
    num_buckets: R.
    max_distance: distances >= this share the last bucket.
  Returns:
    int32 array, same shape, values in [0, R).
  """
  rel = np.asarray(relative_position, np.int64)
  buckets = np.zeros_like(rel)
  if bidirectional:
    num_buckets //= 2
    buckets += (rel > 0).astype(np.int64) * num_buckets
    distance = np.abs(rel)
  else:
    distance = -np.minimum(rel, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # max(.., max_exact) only avoids log(0) warnings where `is_small` wins.
  safe = np.maximum(distance, max_exact).astype(np.float32)
  scaled = (np.log(safe / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(num_buckets - max_exact))
  large = np.minimum(max_exact + scaled.astype(np.int64), num_buckets - 1)
  return (buckets + np.where(is_small, distance, large)).astype(np.int32)


class RelativePositionBias(nn.Module):
  """T5 relative position bias, one table `rel_embedding` [R, N] per stack.

  Attributes:
    num_buckets: R.
    max_distance: bucketing max distance.
    num_heads: N.
    bidirectional: True for the encoder, False for the causal decoder.
    param_dtype: table storage dtype.
  """
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, q_len: int, k_len: int,
               q_offset: Optional[Array] = None) -> Array:
    """Bias for queries at `q_offset + [0, Q)` and keys at `[0, K)`.

    Args:
      q_len: Q.
      k_len: K.
      q_offset: None (queries start at 0, fully static) or a traced int
        scalar (cached decoding).
    Returns:
      [1, N, Q, K] float32.
    """
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(_normal(1.0), ("relpos_buckets", "heads")),
        (self.num_buckets, self.num_heads), self.param_dtype)
    bucket_fn = functools.partial(
        relative_position_buckets, bidirectional=self.bidirectional,
        num_buckets=self.num_buckets, max_distance=self.max_distance)
    if q_offset is None:
      rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]  # [Q, K]
      buckets = jnp.asarray(bucket_fn(rel))
    else:
      span = max(q_len, k_len)
      lookup = jnp.asarray(bucket_fn(np.arange(-span, span + 1)))  # [2 span + 1]
      rel = (jnp.arange(k_len)[None, :]
             - (jnp.arange(q_len)[:, None] + q_offset))  # [Q, K]
      buckets = lookup[jnp.clip(rel + span, 0, 2 * span)]
    values = jnp.take(table.astype(jnp.float32), buckets, axis=0)  # [Q, K, N]
    return jnp.transpose(values, (2, 0, 1))[None]  # [1, N, Q, K]


class MultiHeadAttention(nn.Module):
  """Multi-head (optionally grouped-query) attention with float32 softmax.

  Parameters: `query` kernel [H, N, D] ("embed", "heads", "kv"); `key`,
  `value` kernels [H, Kh, D] ("embed", "heads" or "kv_heads", "kv"); `out`
  kernel [N, D, H] ("heads", "kv", "embed"); with `use_bias`, biases [N, D] /
  [Kh, D] / [H].

  Scores are `score_scale * q.k` (T5: 1, BERT: 1/sqrt(D)), plus the optional
  additive `bias`, masked by `mask`.

  Cached decoding ("cache" collection), driven by `decode_mode`:
    * "init": self-attention allocates zero `cached_key`/`cached_value`
      [B, K, Kh, D] for the current (full) length; cross-attention stores the
      projected `cross_key`/`cross_value` of `inputs_kv`. Outputs are those of
      a normal forward pass.
    * "step": self-attention writes this chunk's keys/values at
      `cache_index` and attends over the whole cache (the caller's mask hides
      unwritten slots); cross-attention reuses the stored keys/values.

  Attributes:
    num_heads: N.
    head_dim: D.
    num_kv_heads: Kh (default N); N must be a multiple of it.
    dropout_rate: dropout on the attention probabilities.
    is_cross: encoder-decoder attention (affects caching only).
    use_bias: biased projections (BERT).
    score_scale: multiplies the raw scores q.k.
    init_stddev: std of freshly initialised kernels; None is T5's fan-in
      scaling ((H D)^-0.5 for queries, H^-0.5 for keys/values, (N D)^-0.5 out).
    dtype: compute dtype.
    param_dtype: kernel storage dtype.
    attention_impl: one of ATTENTION_IMPLS (see the module docstring).
  """
  num_heads: int
  head_dim: int
  num_kv_heads: Optional[int] = None
  dropout_rate: float = 0.0
  is_cross: bool = False
  use_bias: bool = False
  score_scale: float = 1.0
  init_stddev: Optional[float] = None
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  attention_impl: str = "xla"

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  def _dense(self, name: str, features: tuple[int, ...], axes: tuple[str, ...],
             stddev: float, num_in: int = 1) -> DenseGeneral:
    return DenseGeneral(features=features, kernel_axes=axes, num_in=num_in,
                        stddev=self.init_stddev or stddev, use_bias=self.use_bias,
                        dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Optional[Array],
               mask: Optional[Array], kv_prefix: Optional[tuple[Array, ...]] = None,
               k_scale: Optional[Array] = None, v_scale: Optional[Array] = None, *,
               deterministic: bool = True, decode_mode: Optional[str] = None,
               cache_index: Optional[Array] = None) -> Array:
    """Attends from `inputs_q` to `inputs_kv` (plus an optional prefix).

    Args:
      inputs_q: [B, Q, H].
      inputs_kv: [B, K, H] (ignored by cross-attention in "step" mode).
      bias: [1 or B, N, Q, K] float32 additive bias, or None.
      mask: [B or 1, 1 or N, Q or 1, K] bool, True = attend; None = all.
      kv_prefix: (key, value), each [B or 1, P, Kh, D], prepended to the keys
        and values; always attended, zero bias. A third entry, the prefix
        bias [1 or B, N, Q, P], gives the prefix keys that bias instead
        (used only where `bias` is given).
      k_scale: [Kh * D] (IA)^3 rescaling of the projected keys.
      v_scale: [Kh * D] rescaling of the projected values.
      deterministic: disables dropout.
      decode_mode: None, "init" or "step" (see the class docstring).
      cache_index: int scalar, first cache slot of this chunk ("step").
    Returns:
      [B, Q, H] in `dtype`.
    """
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={self.attention_impl!r}; expected one of "
                       f"{ATTENTION_IMPLS}.")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.kv_heads}.")
    _, q_len, embed = inputs_q.shape
    n, kh, d = self.num_heads, self.kv_heads, self.head_dim
    kv_axis = "heads" if kh == n else "kv_heads"
    query = self._dense("query", (n, d), ("embed", "heads", "kv"),
                        (embed * d) ** -0.5)(inputs_q)  # [B, Q, N, D]
    query = constrain(query, BATCH_LENGTH_HEADS_KV)
    if self.is_cross and decode_mode == "step":
      if not self.has_variable("cache", "cross_key"):
        raise ValueError("Cross-attention cache is missing: run a decode=True "
                         "initialization call first.")
      key = self.variable("cache", "cross_key").value
      value = self.variable("cache", "cross_value").value
    else:
      key = self._dense("key", (kh, d), ("embed", kv_axis, "kv"),
                        embed ** -0.5)(inputs_kv)  # [B, K, Kh, D]
      value = self._dense("value", (kh, d), ("embed", kv_axis, "kv"),
                          embed ** -0.5)(inputs_kv)
      if k_scale is not None:
        key = key * k_scale.reshape(kh, d).astype(key.dtype)
      if v_scale is not None:
        value = value * v_scale.reshape(kh, d).astype(value.dtype)
      if self.is_cross and decode_mode == "init":
        self.variable("cache", "cross_key", lambda: key)
        self.variable("cache", "cross_value", lambda: value)
      elif not self.is_cross and decode_mode is not None:
        key, value = self._self_cache(key, value, decode_mode, cache_index)
    if kv_prefix is not None:
      key, value, bias, mask = _prepend_prefix(kv_prefix, key, value, bias,
                                               mask, q_len, self.dtype)
    kv_names = BATCH_KVLENGTH_HEADS_KV if kh == n else BATCH_KVLENGTH_KVHEADS_KV
    key, value = constrain(key, kv_names), constrain(value, kv_names)
    out = self._attend(query, key, value, bias, mask, deterministic)  # [B, Q, N, D]
    return self._dense("out", (embed,), ("heads", "kv", "embed"), (n * d) ** -0.5,
                       num_in=2)(out)

  def _self_cache(self, key: Array, value: Array, decode_mode: str,
                  cache_index: Optional[Array]) -> tuple[Array, Array]:
    """Allocates ("init") or updates ("step") the self-attention cache."""
    if decode_mode not in ("init", "step"):
      raise ValueError(f"decode_mode must be None, 'init' or 'step'; got {decode_mode!r}.")
    initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape,
                                 value.dtype)
    if decode_mode == "init":
      return key, value
    if not initialized or cache_index is None:
      raise ValueError("Self-attention cache is missing: run a decode=True "
                       "initialization call first.")
    if key.shape[0] != cached_key.value.shape[0]:
      raise ValueError(f"Batch size {key.shape[0]} differs from the cache's "
                       f"{cached_key.value.shape[0]}.")
    start = (0, cache_index, 0, 0)
    cached_key.value = lax.dynamic_update_slice(
        cached_key.value, key.astype(cached_key.value.dtype), start)
    cached_value.value = lax.dynamic_update_slice(
        cached_value.value, value.astype(cached_value.value.dtype), start)
    return cached_key.value, cached_value.value  # [B, K_max, Kh, D]

  def _attend(self, query: Array, key: Array, value: Array, bias: Optional[Array],
              mask: Optional[Array], deterministic: bool) -> Array:
    """Softmax attention: query [B, Q, N, D], key/value [B, K, Kh, D] -> [B, Q, N, D]."""
    dropout_active = self.dropout_rate > 0.0 and not deterministic
    impl = select_attention_impl(self.attention_impl, jnp.dtype(self.dtype),
                                 self.head_dim, dropout_active)
    if impl != "xla":
      return constrain(fused_attention(query, key, value, bias, mask, impl,
                                       self.score_scale), BATCH_LENGTH_HEADS_KV)
    n, kh = self.num_heads, key.shape[2]
    if kh != n:  # grouped-query attention: queries [B, Q, Kh, G, D]
      batch, q_len, _, d = query.shape
      query = query.reshape(batch, q_len, kh, n // kh, d)
      scores = jnp.einsum("bqhgd,bkhd->bhgqk", query, key,
                          preferred_element_type=stat_dtype(self.dtype))
      scores = scores.reshape(batch, n, q_len, key.shape[1])  # [B, N, Q, K]
    else:
      scores = jnp.einsum("bqnd,bknd->bnqk", query, key,
                          preferred_element_type=stat_dtype(self.dtype))  # [B, N, Q, K]
    if self.score_scale != 1.0:
      scores = scores * self.score_scale
    if bias is not None:
      scores = scores + bias.astype(scores.dtype)
    if mask is not None:
      scores = jnp.where(mask, scores, MASKED_SCORE)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(rate=self.dropout_rate)(probs, deterministic=deterministic)
    probs = probs.astype(self.dtype)
    if kh != n:
      batch, _, q_len, k_len = probs.shape
      probs = probs.reshape(batch, kh, n // kh, q_len, k_len)
      out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, value)
      out = out.reshape(batch, q_len, n, value.shape[-1])
    else:
      out = jnp.einsum("bnqk,bknd->bqnd", probs, value)
    return constrain(out, BATCH_LENGTH_HEADS_KV)


def cudnn_unsupported_reason(dtype: DType, head_dim: int) -> Optional[str]:
  """Why cuDNN flash attention cannot run here, or None when it can."""
  if jax.default_backend() != "gpu":
    return f"it needs a GPU (the default backend is {jax.default_backend()!r})"
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"it needs bfloat16 or float16 compute (dtype is {jnp.dtype(dtype).name})"
  if head_dim % 8 or head_dim > 128:
    return f"it needs a head dim that is a multiple of 8 up to 128 (D = {head_dim})"
  return None


_LOGGED_DROPOUT_FALLBACK: set = set()


def select_attention_impl(attention_impl: str, dtype: DType, head_dim: int,
                          dropout_active: bool = False) -> str:
  """The implementation one attention call runs: "xla", "fused_xla" or "cudnn".

  Args:
    attention_impl: the requested one of ATTENTION_IMPLS.
    dtype: compute dtype.
    head_dim: D.
    dropout_active: attention dropout applies to this call.
  Raises:
    ValueError: "cudnn" requested where cuDNN cannot run.
  """
  if attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={attention_impl!r}; expected one of "
                     f"{ATTENTION_IMPLS}.")
  if attention_impl == "xla":
    return "xla"
  if dropout_active:
    if attention_impl not in _LOGGED_DROPOUT_FALLBACK:
      _LOGGED_DROPOUT_FALLBACK.add(attention_impl)
      log.warning("attention_impl=%r: attention dropout is active, which fused "
                  "kernels do not implement; using the 'xla' einsum path.",
                  attention_impl)
    return "xla"
  reason = cudnn_unsupported_reason(dtype, head_dim)
  if attention_impl == "cudnn" and reason is not None:
    raise ValueError(f"attention_impl='cudnn' cannot be used: {reason}. Use "
                     "'auto' (cuDNN where possible) or 'xla'.")
  if attention_impl == "auto":
    return "cudnn" if reason is None else "xla"
  return attention_impl


def fused_attention(query: Array, key: Array, value: Array, bias: Optional[Array],
                    mask: Optional[Array], implementation: str,
                    scale: float = 1.0) -> Array:
  """Attention through `jax.nn.dot_product_attention`.

  Args:
    query: [B, Q, N, D].
    key: [B, K, Kh, D].
    value: [B, K, Kh, D].
    bias: [1 or B, N, Q, K] additive bias (float32), or None.
    mask: [B or 1, 1 or N, Q or 1, K] bool, True = attend; or None.
    implementation: "fused_xla" or "cudnn".
    scale: the score scale (T5: 1).
  Returns:
    [B, Q, N, D] in the query's dtype.
  """
  if implementation not in ("fused_xla", "cudnn"):
    raise ValueError(f"fused_attention: implementation={implementation!r}; "
                     "expected 'fused_xla' or 'cudnn'.")
  if bias is not None and implementation == "cudnn":
    bias = bias.astype(query.dtype)  # cuDNN adds the bias in the compute dtype.
  if mask is not None:
    mask = mask.astype(bool)
  return jax.nn.dot_product_attention(
      query, key, value, bias=bias, mask=mask, scale=scale,
      implementation="xla" if implementation == "fused_xla" else "cudnn")


def _prepend_prefix(kv_prefix: tuple[Array, ...], key: Array, value: Array,
                    bias: Optional[Array], mask: Optional[Array], q_len: int,
                    dtype: DType):
  """Prepends prefix keys/values [B|1, P, N, D]; extends bias (zeros, or the
  optional third entry [1|B, N, Q, P] of `kv_prefix`) and mask (ones)."""
  prefix_key, prefix_value = kv_prefix[:2]
  prefix_bias = kv_prefix[2] if len(kv_prefix) > 2 else None
  batch = key.shape[0]
  shape = (batch,) + tuple(prefix_key.shape[1:])  # [B, P, N, D]
  if prefix_key.shape[0] not in (1, batch) or shape[2:] != key.shape[2:]:
    raise ValueError(f"kv prefix of shape {prefix_key.shape} does not fit keys "
                     f"of shape {key.shape} (need [B or 1, P, N, D]).")
  if prefix_value.shape != prefix_key.shape:
    raise ValueError(f"kv prefix value shape {prefix_value.shape} differs from "
                     f"its key shape {prefix_key.shape}.")
  plen = shape[1]
  key = jnp.concatenate([jnp.broadcast_to(prefix_key.astype(dtype), shape), key], 1)
  value = jnp.concatenate(
      [jnp.broadcast_to(prefix_value.astype(dtype), shape), value], 1)
  if bias is not None:
    if prefix_bias is None:
      prefix_bias = jnp.zeros(bias.shape[:2] + (q_len, plen), bias.dtype)
    elif prefix_bias.shape[2:] != (q_len, plen):
      raise ValueError(f"kv prefix bias of shape {prefix_bias.shape} does not fit "
                       f"{q_len} queries and a prefix of {plen} keys.")
    lead = jnp.broadcast_shapes(bias.shape[:2], prefix_bias.shape[:2])
    bias = jnp.concatenate(
        [jnp.broadcast_to(prefix_bias.astype(bias.dtype), lead + (q_len, plen)),
         jnp.broadcast_to(bias, lead + (q_len, bias.shape[3]))], -1)  # [., N, Q, P + K]
  if mask is not None:
    lead = mask.shape[:2] + (q_len,)
    mask = jnp.concatenate(
        [jnp.ones(lead + (plen,), bool),
         jnp.broadcast_to(mask, lead + (mask.shape[3],))], -1)  # [., ., Q, P + K]
  return key, value, bias, mask


class MlpBlock(nn.Module):
  """Feed-forward block: `wi` + activation, or gated act(`wi_0`) * `wi_1`; `wo`.

  Kernels: `wi`/`wi_0`/`wi_1` [H, F] ("embed", "mlp"); `wo` [F, H] ("mlp",
  "embed"); with `use_bias`, biases [F] / [H]. T5: ReLU `wi` (original) or
  gated tanh-GELU (T5 1.1), no bias; BERT: `wi` + GELU, biased.

  Attributes:
    d_ff: F.
    activation: a key of ACTIVATIONS.
    gated: act(x wi_0) * (x wi_1) instead of act(x wi).
    use_bias: biased projections.
    dropout_rate: dropout on the hidden activation (T5; BERT has none here).
    init_stddev: std of fresh kernels; None: H^-0.5 for wi, F^-0.5 for wo.
    dtype: compute dtype.
    param_dtype: kernel storage dtype.
  """
  d_ff: int
  activation: str = "gelu_new"
  gated: bool = True
  use_bias: bool = False
  dropout_rate: float = 0.0
  init_stddev: Optional[float] = None
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, scale: Optional[Array] = None, *,
               deterministic: bool = True) -> Array:
    """x: [B, T, H]; scale: [F] (IA)^3 rescaling of the hidden -> [B, T, H]."""
    act = activation(self.activation)
    embed = x.shape[-1]
    dense_in = functools.partial(
        DenseGeneral, features=(self.d_ff,), kernel_axes=("embed", "mlp"),
        stddev=self.init_stddev or embed ** -0.5, use_bias=self.use_bias,
        dtype=self.dtype, param_dtype=self.param_dtype)
    if self.gated:
      hidden = act(dense_in(name="wi_0")(x)) * dense_in(name="wi_1")(x)
    else:
      hidden = act(dense_in(name="wi")(x))
    if scale is not None:
      hidden = hidden * scale.astype(hidden.dtype)
    hidden = constrain(hidden, BATCH_LENGTH_MLP)  # [B, T, F]
    hidden = nn.Dropout(rate=self.dropout_rate)(hidden, deterministic=deterministic)
    return DenseGeneral(features=(embed,), kernel_axes=("mlp", "embed"),
                        stddev=self.init_stddev or self.d_ff ** -0.5,
                        use_bias=self.use_bias, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="wo")(hidden)
