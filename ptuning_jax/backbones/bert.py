"""The BERT family (BERT, RoBERTa, XLM-R, MiniLM) as a Flax Linen encoder.

Numerically it follows Hugging Face's `BertModel` / `RobertaModel` (checked
to 1e-4 in float32 by tests/bert_test.py on the real all-MiniLM-L6-v2 weights
and on random RoBERTa / BERT layouts): word + token-type + absolute position
embeddings, an embedding LayerNorm, post-LN blocks (attention with biases and
1/sqrt(D) score scaling, then a GELU / ReLU MLP), an optional tanh pooler on
the first position and an optional masked-LM head tied to the word
embeddings. See `layers` for why Linen with logical partitioning.

Parameter tree (`params[...]`):
  embeddings/word_embeddings [V, H], position_embeddings [M, H],
      token_type_embeddings [Y, H], layer_norm/{scale, bias} [H]
  layers_{i}/attention/{query, key, value}/{kernel [H, N, D], bias [N, D]}
  layers_{i}/attention/out/{kernel [N, D, H], bias [H]}
  layers_{i}/attention_layer_norm/{scale, bias}
  layers_{i}/mlp/wi/{kernel [H, F], bias [F]}, mlp/wo/{kernel [F, H], bias [H]}
  layers_{i}/mlp_layer_norm/{scale, bias}
  pooler/{kernel [H, H], bias [H]}                          (with_pooler)
  mlm_head/transform/{kernel, bias}, mlm_head/layer_norm/{scale, bias},
      mlm_head/bias [V]                                      (with_mlm_head)

Hooks (`hooks.Hooks`, same semantics as `t5`; empty hooks give the plain
model bit for bit):
  * `encoder_inputs(x, tokens, mask)` is called on the *word* embeddings,
    before position embeddings, the segment-0 token-type embedding, the
    embedding LayerNorm and dropout, which are then applied to the returned
    sequence. This is what Hugging Face PEFT does for BERT-family models
    (`inputs_embeds = prompt ⊕ word embeddings`, `token_type_ids` zero-padded
    for the prompt): prompt vectors get position ids by their place in the
    new sequence, the segment-0 embedding and the LayerNorm, exactly like
    real tokens. A token of segment s reaches the hook as its word embedding
    plus `type_emb[s] - type_emb[0]`, so any placement keeps its segment.
  * `kv_prefixes["encoder"]`: per-layer key/value prefixes [L, B, P, N, D]
    (P-Tuning v2 deep prompts), always attended, never queried. They are not
    part of the sequence, so position ids do not move (P-Tuning v2's code
    passes them as HF `past_key_values`, which also shifts BERT's position
    ids by P; tests/bert_test.py checks equality with HF's cache path given
    explicit positions).
  * `layer_inputs("encoder", i, x, mask)` on the hidden states entering
    layer i > 0.
  * `scales["encoder/k" | "encoder/v"]` [L, N * D] on the projected keys /
    values (bias included, before prefixes are prepended);
    `scales["encoder/mlp"]` [L, F] on the MLP activation ((IA)^3).

Positions. `position_offset == 0` (BERT): position ids are 0..T'-1.
`position_offset > 0` (RoBERTa, XLM-R: pad_token_id + 1): an attended token
gets `position_offset + (attended tokens before it)` and a masked one
`position_offset - 1` (the padding index). Hugging Face derives this from
`input_ids != pad_token_id`; we derive it from the attention mask (after the
`encoder_inputs` hook), which is the same for ordinary padded batches.

Heads (separate, trainable modules; the frozen pooler and MLM head are
passed in as functions, see `pooler_fn` / `mlm_fn`): `ClassificationHead`
(classification or, with one class, regression on the first-position or
masked-mean representation) and `VerbalizerHead` (label-word scoring through
the masked-LM head at the mask position).

Dimension letters:
  B batch, T input length, T' length after `encoder_inputs` (T plus P),
  P prompt / prefix length, H hidden size (d_model), N heads, D head dim,
  F MLP dim, V vocabulary, M max positions, Y token types, L layers,
  K keys (P + T'), C classes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.backbones import layers
from ptuning_jax.backbones import t5

Array = jax.Array
NO_HOOKS = hooks_lib.NO_HOOKS

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU
    "gelu_new": layers.gelu_new,  # tanh approximation
    "relu": jax.nn.relu,
}
REMAT_POLICIES = t5.REMAT_POLICIES
POOLINGS = ("cls", "mean")
# Initialiser scale of freshly created weights (HF `initializer_range`).
INIT_STDDEV = 0.02


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture and numerics of one BERT-family encoder.

  Field names follow Hugging Face's `config.json`; the properties `d_model`,
  `num_heads`, `d_kv`, `d_ff`, `num_encoder_layers` and `num_decoder_layers`
  give the same dims under `t5.T5Config`'s names, so prompt methods read
  either family alike.

  Attributes:
    vocab_size: V.
    hidden_size: H.
    num_hidden_layers: L.
    num_attention_heads: N (H must be divisible by N; D = H / N).
    intermediate_size: F.
    hidden_act: "gelu" (exact erf), "gelu_new" (tanh approximation) or "relu".
    max_position_embeddings: M, rows of the position table.
    type_vocab_size: Y, rows of the token-type table (1 for RoBERTa).
    layer_norm_eps: LayerNorm epsilon.
    pad_token_id: padding id (RoBERTa's positions count from it).
    position_offset: 0 for BERT; pad_token_id + 1 for RoBERTa / XLM-R (see
      the module docstring).
    hidden_dropout_rate: dropout on embeddings and sublayer outputs.
    attention_dropout_rate: dropout on attention probabilities.
    with_pooler: the model has the tanh pooler (`pooler.dense.*`).
    with_mlm_head: the model has a masked-LM head (`cls.predictions.*` or
      `lm_head.*`), tied to the word embeddings.
    mlm_hidden_act: activation of the MLM head's transform; None means
      `hidden_act` (BERT). RoBERTa's head always uses exact "gelu".
    dtype: activation (compute) dtype name.
    param_dtype: parameter storage dtype name.
    remat_policy: one of REMAT_POLICIES (per-layer rematerialisation).
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  position_offset: int = 0
  hidden_dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  with_pooler: bool = True
  with_mlm_head: bool = False
  mlm_hidden_act: Optional[str] = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}.")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"BertConfig.hidden_size={self.hidden_size} is not divisible "
                       f"by num_attention_heads={self.num_attention_heads}.")
    for name in ("hidden_act", "mlm_hidden_act"):
      value = getattr(self, name)
      if value not in ACTIVATIONS and not (name == "mlm_hidden_act" and value is None):
        raise ValueError(f"BertConfig.{name}={value!r}; expected one of "
                         f"{sorted(ACTIVATIONS)}.")
    if not 0 <= self.pad_token_id < self.vocab_size:
      raise ValueError(f"BertConfig.pad_token_id={self.pad_token_id} is outside "
                       f"the vocabulary [0, {self.vocab_size}).")
    if not 0 <= self.position_offset < self.max_position_embeddings:
      raise ValueError(f"BertConfig.position_offset={self.position_offset} must be "
                       f"in [0, max_position_embeddings={self.max_position_embeddings}).")
    for name in ("hidden_dropout_rate", "attention_dropout_rate"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"BertConfig.{name} must be in [0, 1), got {getattr(self, name)}.")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"BertConfig.remat_policy={self.remat_policy!r}; expected one "
                       f"of {sorted(REMAT_POLICIES)}.")
    for name in ("dtype", "param_dtype"):
      value = getattr(self, name)
      try:
        ok = isinstance(value, str) and jnp.issubdtype(jnp.dtype(value), jnp.floating)
      except TypeError:
        ok = False
      if not ok:
        raise ValueError(f"BertConfig.{name} must be a float dtype name, got {value!r}.")

  # ---- T5-style names of the dims ----

  @property
  def d_model(self) -> int:
    return self.hidden_size

  @property
  def num_heads(self) -> int:
    return self.num_attention_heads

  @property
  def d_kv(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def d_ff(self) -> int:
    return self.intermediate_size

  @property
  def num_encoder_layers(self) -> int:
    return self.num_hidden_layers

  @property
  def num_decoder_layers(self) -> int:
    return 0

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def max_length(self) -> int:
    """Longest sequence T' the position table covers."""
    return self.max_position_embeddings - self.position_offset


def num_params(config: BertConfig) -> int:
  """Parameter count, analytically (matches `jax.eval_shape` of init)."""
  h, f = config.hidden_size, config.intermediate_size
  layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h
  embeddings = (config.vocab_size + config.max_position_embeddings
                + config.type_vocab_size + 2) * h
  pooler = (h * h + h) if config.with_pooler else 0
  mlm = (h * h + 3 * h + config.vocab_size) if config.with_mlm_head else 0
  return embeddings + config.num_hidden_layers * layer + pooler + mlm


# --------------------------------- primitives --------------------------------


def _normal(stddev: float = INIT_STDDEV):
  return nn.initializers.normal(stddev=stddev)


def _stat_dtype(dtype) -> Any:
  """float32, or wider if the compute dtype is (float64 in parity tests)."""
  return jnp.promote_types(dtype, jnp.float32)


class LayerNorm(nn.Module):
  """LayerNorm with `scale` and `bias` [H] ("embed",); float32 statistics.

  Attributes:
    epsilon: added to the variance.
    dtype: output dtype.
    param_dtype: parameter storage dtype.
  """
  epsilon: float = 1e-12
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., H] -> [..., H] in `dtype`."""
    features = (x.shape[-1],)
    scale = self.param("scale", nn.with_logical_partitioning(
        nn.initializers.ones, ("embed",)), features, self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros, ("embed",)), features, self.param_dtype)
    stat = _stat_dtype(x.dtype)
    x32 = x.astype(stat)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centered = x32 - mean
    variance = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
    y = centered * lax.rsqrt(variance + self.epsilon)
    y = y * scale.astype(stat) + bias.astype(stat)
    return y.astype(self.dtype)


class Dense(nn.Module):
  """Affine map from the trailing `num_in` axes to `features`, with a bias.

  Attributes:
    features: output feature shape, e.g. `(N, D)` for a query projection.
    kernel_axes: logical names of the kernel dims (inputs, then features).
    num_in: trailing input axes contracted.
    dtype: compute dtype.
    param_dtype: storage dtype.
    output_dtype: accumulate and return in this dtype if set.
  """
  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  num_in: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  output_dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., *in_shape] -> [..., *features]."""
    shape = tuple(x.shape[-self.num_in:]) + tuple(self.features)
    if len(shape) != len(self.kernel_axes):
      raise ValueError(f"{self.name}: kernel shape {shape} needs {len(shape)} "
                       f"axis names, got {self.kernel_axes}.")
    kernel = self.param("kernel", nn.with_logical_partitioning(
        _normal(), self.kernel_axes), shape, self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros, self.kernel_axes[self.num_in:]),
        tuple(self.features), self.param_dtype)
    out_dtype = self.output_dtype or self.dtype
    contract = (tuple(range(x.ndim - self.num_in, x.ndim)), tuple(range(self.num_in)))
    y = lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                        (contract, ((), ())), preferred_element_type=out_dtype)
    return y + bias.astype(out_dtype)


def _kwargs(config: BertConfig) -> dict:
  return dict(dtype=config.compute_dtype, param_dtype=config.params_dtype)


def _layer_norm(config: BertConfig, name: str) -> LayerNorm:
  return LayerNorm(epsilon=config.layer_norm_eps, name=name, **_kwargs(config))


# --------------------------------- embeddings --------------------------------


def position_ids(mask: Array, offset: int) -> Array:
  """Position ids [B, T] from a mask [B, T] (see the module docstring)."""
  if offset == 0:
    return jnp.broadcast_to(jnp.arange(mask.shape[1], dtype=jnp.int32), mask.shape)
  attended = mask.astype(jnp.int32)
  return jnp.cumsum(attended, axis=1) * attended + (offset - 1)


class Embeddings(nn.Module):
  """Word + token-type + position embeddings, LayerNorm, dropout."""
  config: BertConfig

  def setup(self):
    cfg = self.config
    h = cfg.hidden_size

    def table(name, rows, axis):
      return self.param(name, nn.with_logical_partitioning(_normal(), (axis, "embed")),
                        (rows, h), cfg.params_dtype)

    self.word_embeddings = table("word_embeddings", cfg.vocab_size, "vocab")
    self.position_embeddings = table("position_embeddings",
                                     cfg.max_position_embeddings, "position")
    self.token_type_embeddings = table("token_type_embeddings",
                                       cfg.type_vocab_size, "token_type")
    self.layer_norm = _layer_norm(cfg, "layer_norm")
    self.dropout = nn.Dropout(rate=cfg.hidden_dropout_rate)

  def __call__(self, input_ids: Array, mask: Array, token_type_ids: Array,
               hooks: hooks_lib.Hooks, deterministic: bool) -> tuple[Array, Array]:
    """Embeds the input; applies the `encoder_inputs` hook.

    Args:
      input_ids: [B, T] int ids.
      mask: [B, T] bool, True = real token.
      token_type_ids: [B, T] int segment ids.
      hooks: `encoder_inputs` may change the length to T'.
      deterministic: disables dropout.
    Returns:
      (x [B, T', H] in the compute dtype, mask [B, T'] bool).
    """
    cfg = self.config
    dtype = cfg.compute_dtype
    x = jnp.take(self.word_embeddings, input_ids, axis=0).astype(dtype)  # [B, T, H]
    types = jnp.take(self.token_type_embeddings, token_type_ids, axis=0).astype(dtype)
    if hooks.encoder_inputs is None:
      x = x + types
    else:
      type0 = self.token_type_embeddings[0].astype(dtype)  # [H]
      x, mask = _apply_encoder_inputs(hooks, x + (types - type0), input_ids, mask)
      x = x.astype(dtype) + type0  # [B, T', H]
    length = x.shape[1]
    if length > cfg.max_length:
      raise ValueError(
          f"Sequence length {length} (after encoder_inputs hooks) exceeds the "
          f"{cfg.max_length} positions of this model (max_position_embeddings="
          f"{cfg.max_position_embeddings}, position_offset={cfg.position_offset}).")
    positions = position_ids(mask, cfg.position_offset)  # [B, T']
    x = x + jnp.take(self.position_embeddings, positions, axis=0).astype(dtype)
    x = self.dropout(self.layer_norm(x), deterministic=deterministic)
    return layers.constrain(x, layers.BATCH_LENGTH_EMBED), mask


def _apply_encoder_inputs(hooks: hooks_lib.Hooks, x: Array, tokens: Array,
                          mask: Array) -> tuple[Array, Array]:
  batch, _, embed = x.shape
  x, mask = hooks.encoder_inputs(x, tokens, mask)  # [B, T', H], [B, T']
  if x.ndim != 3 or x.shape[0] != batch or x.shape[2] != embed:
    raise ValueError(f"hooks.encoder_inputs returned embeddings of shape {x.shape}; "
                     f"expected [B={batch}, T', H={embed}].")
  if mask.shape != x.shape[:2]:
    raise ValueError(f"hooks.encoder_inputs returned a mask of shape {mask.shape} "
                     f"for embeddings of shape {x.shape}; expected {x.shape[:2]}.")
  return x, mask.astype(bool)


# ----------------------------------- layers ----------------------------------


class SelfAttention(nn.Module):
  """BERT self-attention: biased projections, 1/sqrt(D) scaling, f32 softmax.

  Parameters: `query`, `key`, `value` kernels [H, N, D] ("embed", "heads",
  "kv") with biases [N, D]; `out` kernel [N, D, H] ("heads", "kv", "embed")
  with bias [H].
  """
  config: BertConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array, kv_prefix: Optional[tuple[Array, Array]],
               k_scale: Optional[Array], v_scale: Optional[Array],
               deterministic: bool) -> Array:
    """x: [B, T, H]; mask [B, T] bool; kv_prefix ([B|1, P, N, D] x 2) or None;
    k_scale, v_scale [N * D] or None. Returns [B, T, H]."""
    cfg = self.config
    n, d = cfg.num_heads, cfg.d_kv

    def proj(name):
      return Dense((n, d), ("embed", "heads", "kv"), name=name, **_kwargs(cfg))(x)

    query = layers.constrain(proj("query"), layers.BATCH_LENGTH_HEADS_KV)  # [B, T, N, D]
    key, value = proj("key"), proj("value")
    if k_scale is not None:
      key = key * k_scale.reshape(n, d).astype(key.dtype)
    if v_scale is not None:
      value = value * v_scale.reshape(n, d).astype(value.dtype)
    key_mask = mask  # [B, K]
    if kv_prefix is not None:
      key, value, key_mask = _prepend_prefix(kv_prefix, key, value, mask)
    key = layers.constrain(key, layers.BATCH_KVLENGTH_HEADS_KV)  # [B, K, N, D]
    value = layers.constrain(value, layers.BATCH_KVLENGTH_HEADS_KV)
    scores = jnp.einsum("bqnd,bknd->bnqk", query, key,
                        preferred_element_type=_stat_dtype(query.dtype)) * (d ** -0.5)
    scores = jnp.where(key_mask[:, None, None, :], scores, layers.MASKED_SCORE)
    probs = jax.nn.softmax(scores, axis=-1)  # [B, N, T, K] (at least) float32
    probs = nn.Dropout(rate=cfg.attention_dropout_rate)(
        probs, deterministic=deterministic)
    out = jnp.einsum("bnqk,bknd->bqnd", probs.astype(cfg.compute_dtype), value)
    out = layers.constrain(out, layers.BATCH_LENGTH_HEADS_KV)  # [B, T, N, D]
    return Dense((cfg.hidden_size,), ("heads", "kv", "embed"), num_in=2,
                 name="out", **_kwargs(cfg))(out)


def _prepend_prefix(kv_prefix: tuple[Array, Array], key: Array, value: Array,
                    mask: Array) -> tuple[Array, Array, Array]:
  """Prepends prefix keys/values [B|1, P, N, D]; the mask gets P ones."""
  prefix_key, prefix_value = kv_prefix
  batch = key.shape[0]
  shape = (batch,) + tuple(prefix_key.shape[1:])  # [B, P, N, D]
  if prefix_key.shape[0] not in (1, batch):
    raise ValueError(f"kv prefix of shape {prefix_key.shape} does not fit a batch "
                     f"of {batch} (need [B or 1, P, N, D]).")
  key = jnp.concatenate(
      [jnp.broadcast_to(prefix_key.astype(key.dtype), shape), key], axis=1)
  value = jnp.concatenate(
      [jnp.broadcast_to(prefix_value.astype(value.dtype), shape), value], axis=1)
  mask = jnp.concatenate([jnp.ones((batch, shape[1]), bool), mask], axis=1)
  return key, value, mask  # [B, P + T, N, D] x 2, [B, P + T]


class Mlp(nn.Module):
  """`wi` [H, F] ("embed", "mlp") + activation + `wo` [F, H] ("mlp", "embed")."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: Array, scale: Optional[Array]) -> Array:
    """x: [B, T, H]; scale [F] or None -> [B, T, H]."""
    cfg = self.config
    h = Dense((cfg.d_ff,), ("embed", "mlp"), name="wi", **_kwargs(cfg))(x)
    h = ACTIVATIONS[cfg.hidden_act](h)
    if scale is not None:
      h = h * scale.astype(h.dtype)
    h = layers.constrain(h, layers.BATCH_LENGTH_MLP)  # [B, T, F]
    return Dense((cfg.hidden_size,), ("mlp", "embed"), name="wo", **_kwargs(cfg))(h)


class Layer(nn.Module):
  """Post-LN block: x = LN(x + attn(x)); x = LN(x + mlp(x))."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask, kv_prefix, scales, deterministic):
    """x: [B, T, H]; mask [B, T] bool; kv_prefix or None; scales {"k", "v":
    [N * D], "mlp": [F]}. Returns [B, T, H]."""
    cfg = self.config
    dropout = nn.Dropout(rate=cfg.hidden_dropout_rate)
    h = SelfAttention(cfg, name="attention")(
        x, mask, kv_prefix, scales.get("k"), scales.get("v"), deterministic)
    x = _layer_norm(cfg, "attention_layer_norm")(
        x + dropout(h, deterministic=deterministic))
    x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)
    h = Mlp(cfg, name="mlp")(x, scales.get("mlp"))
    x = _layer_norm(cfg, "mlp_layer_norm")(x + dropout(h, deterministic=deterministic))
    return layers.constrain(x, layers.BATCH_LENGTH_EMBED)


class MlmHead(nn.Module):
  """Masked-LM head: dense + activation + LayerNorm, then the tied word
  embeddings plus a bias `bias` [V] ("vocab",)."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: Array, word_embeddings: Array,
               vocab_ids: Optional[Array]) -> Array:
    """x: [..., H]; word_embeddings [V, H]; vocab_ids [C] or None.

    Returns logits [..., C] (or [..., V]) float32.
    """
    cfg = self.config
    bias = self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros, ("vocab",)), (cfg.vocab_size,), cfg.params_dtype)
    h = Dense((cfg.hidden_size,), ("embed", "mlp"), name="transform", **_kwargs(cfg))(x)
    h = ACTIVATIONS[cfg.mlm_hidden_act or cfg.hidden_act](h)
    h = _layer_norm(cfg, "layer_norm")(h)
    table = word_embeddings
    if vocab_ids is not None:
      table, bias = jnp.take(table, vocab_ids, axis=0), jnp.take(bias, vocab_ids)
    out = _stat_dtype(h.dtype)
    logits = jnp.einsum("...h,vh->...v", h, table.astype(cfg.compute_dtype),
                        preferred_element_type=out)
    return logits + bias.astype(out)


# ----------------------------------- hooks -----------------------------------


def _layer_prefix(hooks: hooks_lib.Hooks, config: BertConfig):
  for site in hooks.kv_prefixes:
    if site != "encoder":
      raise ValueError(f"hooks.kv_prefixes[{site!r}]: a BERT encoder has only the "
                       "'encoder' attention site.")
  prefix = hooks.kv_prefixes.get("encoder")
  if prefix is None:
    return None
  expected = (config.num_hidden_layers, config.num_heads, config.d_kv)
  for part in ("key", "value"):
    shape = getattr(prefix, part).shape
    if len(shape) != 5 or (shape[0], shape[3], shape[4]) != expected:
      raise ValueError(
          f"hooks.kv_prefixes['encoder'].{part} has shape {shape}; expected "
          f"[L={expected[0]}, B, P, N={expected[1]}, D={expected[2]}].")
  if prefix.key.shape != prefix.value.shape:
    raise ValueError(f"hooks.kv_prefixes['encoder'] key {prefix.key.shape} and value "
                     f"{prefix.value.shape} shapes differ.")
  return prefix


def _layer_scales(hooks: hooks_lib.Hooks, config: BertConfig) -> dict[str, Array]:
  """{"k" | "v" | "mlp": [L, width]} from the encoder scale sites."""
  out = {}
  for site, value in hooks.scales.items():
    stack, name = site.split("/")
    if stack != "encoder":
      raise ValueError(f"hooks.scales[{site!r}]: a BERT encoder has only the "
                       "'encoder/k', 'encoder/v' and 'encoder/mlp' sites.")
    width = config.d_ff if name == "mlp" else config.num_heads * config.d_kv
    if tuple(value.shape) != (config.num_hidden_layers, width):
      raise ValueError(f"hooks.scales[{site!r}] has shape {tuple(value.shape)}; "
                       f"expected [L, {'F' if name == 'mlp' else 'N * D'}] = "
                       f"{(config.num_hidden_layers, width)}.")
    out[name] = value
  return out


def _checked_layer_inputs(hooks: hooks_lib.Hooks, i: int, x: Array,
                          mask: Array) -> Array:
  out = hooks.layer_inputs("encoder", i, x, mask)
  if out.shape != x.shape:
    raise ValueError(f"hooks.layer_inputs('encoder', {i}) returned shape "
                     f"{out.shape}; it must keep the hidden shape {x.shape}.")
  return out.astype(x.dtype)


# ----------------------------------- model -----------------------------------


class BertEncoder(nn.Module):
  """BERT-family encoder. Call with `model.apply({"params": params}, ...)`.

  Methods (use `method=` with `apply`): `__call__` (last hidden states),
  `encode` (hidden states and mask), `hidden_states` (every layer's output),
  `pool` (the pretrained tanh pooler) and `mlm_logits` (the masked-LM head).

  Attributes:
    config: the architecture.
  """
  config: BertConfig

  def setup(self):
    cfg = self.config
    self.embeddings = Embeddings(cfg)
    layer_cls = Layer
    if cfg.remat_policy != "none":
      layer_cls = nn.remat(Layer, policy=REMAT_POLICIES[cfg.remat_policy],
                           static_argnums=(5,))
    self.layers = [layer_cls(cfg, name=f"layers_{i}")
                   for i in range(cfg.num_hidden_layers)]
    if cfg.with_pooler:
      self.pooler = Dense((cfg.hidden_size,), ("embed", "mlp"), **_kwargs(cfg))
    if cfg.with_mlm_head:
      self.mlm_head = MlmHead(cfg)

  def __call__(self, input_ids: Array, attention_mask: Array,
               token_type_ids: Optional[Array] = None, *,
               hooks: hooks_lib.Hooks = NO_HOOKS,
               deterministic: bool = True) -> Array:
    """Last hidden states.

    Args:
      input_ids: [B, T] int ids.
      attention_mask: [B, T] (bool or 0/1), True = real token.
      token_type_ids: [B, T] segment ids; None means all zeros.
      hooks: injection points of prompt methods (module docstring).
      deterministic: disables dropout (else pass rngs={"dropout": key}).
    Returns:
      hidden [B, T', H] in the compute dtype.
    """
    return self.encode(input_ids, attention_mask, token_type_ids, hooks=hooks,
                       deterministic=deterministic)[0]

  def encode(self, input_ids: Array, attention_mask: Array,
             token_type_ids: Optional[Array] = None, *,
             hooks: hooks_lib.Hooks = NO_HOOKS,
             deterministic: bool = True) -> tuple[Array, Array]:
    """Like `__call__`; returns (hidden [B, T', H], mask [B, T'] bool)."""
    states, mask = self._forward(input_ids, attention_mask, token_type_ids, hooks,
                                 deterministic)
    return states[-1], mask

  def hidden_states(self, input_ids: Array, attention_mask: Array,
                    token_type_ids: Optional[Array] = None, *,
                    hooks: hooks_lib.Hooks = NO_HOOKS,
                    deterministic: bool = True) -> tuple[tuple[Array, ...], Array]:
    """Every hidden state, as HF's `output_hidden_states=True`.

    Returns:
      (L + 1 arrays [B, T', H]: the embedding output, then each layer's
      output (before the next layer's `layer_inputs` hook); mask [B, T']).
    """
    states, mask = self._forward(input_ids, attention_mask, token_type_ids, hooks,
                                 deterministic)
    return tuple(states), mask

  def pool(self, features: Array) -> Array:
    """The pretrained pooler: tanh(dense(features)). [B, H] -> [B, H]."""
    if not self.config.with_pooler:
      raise ValueError("This BertEncoder has no pooler (config.with_pooler=False: "
                       "the checkpoint has no pooler.dense.* tensors).")
    return jnp.tanh(self.pooler(features))

  def mlm_logits(self, hidden: Array, vocab_ids: Optional[Array] = None) -> Array:
    """Masked-LM logits. hidden [..., H]; vocab_ids [C] -> [..., C] (or [..., V])."""
    if not self.config.with_mlm_head:
      raise ValueError(_NO_MLM_HEAD)
    return self.mlm_head(hidden, self.embeddings.word_embeddings, vocab_ids)

  def _forward(self, input_ids, attention_mask, token_type_ids, hooks, deterministic):
    cfg = self.config
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [B, T]; got shape {input_ids.shape}.")
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise TypeError(f"input_ids must be integers, got dtype {input_ids.dtype}.")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    for name, value in (("attention_mask", attention_mask),
                        ("token_type_ids", token_type_ids)):
      if value.shape != input_ids.shape:
        raise ValueError(f"{name} has shape {value.shape}; input_ids has "
                         f"{input_ids.shape}.")
    x, mask = self.embeddings(input_ids, attention_mask.astype(bool), token_type_ids,
                              hooks, deterministic)
    prefix = _layer_prefix(hooks, cfg)
    scales = _layer_scales(hooks, cfg)
    states = [x]
    for i, layer in enumerate(self.layers):
      if i > 0 and hooks.layer_inputs is not None:
        x = _checked_layer_inputs(hooks, i, x, mask)
      kv = None if prefix is None else (prefix.key[i], prefix.value[i])
      x = layer(x, mask, kv, {k: v[i] for k, v in scales.items()}, deterministic)
      states.append(x)
    if self.is_initializing():  # create the pooler / MLM head parameters too
      if cfg.with_pooler:
        self.pool(x[:, 0])
      if cfg.with_mlm_head:
        self.mlm_logits(x[:, :1])
    return states, mask


_NO_MLM_HEAD = (
    "This BertEncoder has no masked-LM head (config.with_mlm_head=False): its "
    "checkpoint has no cls.predictions.* / lm_head.* tensors. all-MiniLM-L6-v2, "
    "for one, is a sentence-embedding checkpoint saved without one. Label-word "
    "(verbalizer) scoring needs an MLM head; use ClassificationHead instead.")


def init_params(config: BertConfig, seed: int = 0) -> Any:
  """Random unboxed params of `BertEncoder(config)` (tests, benchmarks)."""
  model = BertEncoder(config)
  dummy = jnp.ones((1, 1), jnp.int32)
  init = jax.jit(lambda rng: nn.meta.unbox(model.init(rng, dummy, dummy)["params"]))
  return init(jax.random.PRNGKey(seed))


def word_embeddings(params: Any) -> Array:
  """The [V, H] word embedding table of a params tree (prompt initialisers)."""
  return params["embeddings"]["word_embeddings"]


# ----------------------------------- heads -----------------------------------


def pooler_fn(model: BertEncoder, params: Any) -> Callable[[Array], Array]:
  """The frozen pretrained pooler as a function [B, H] -> [B, H]."""
  if not model.config.with_pooler:
    raise ValueError("use_pooler=True needs a checkpoint with a pooler "
                     "(pooler.dense.*); this config has with_pooler=False.")
  return lambda x: model.apply({"params": params}, x, method=BertEncoder.pool)


def mlm_fn(model: BertEncoder, params: Any) -> Callable[[Array, Array], Array]:
  """The frozen masked-LM head as a function (features [B, H], vocab_ids [C])
  -> logits [B, C]."""
  if not model.config.with_mlm_head:
    raise ValueError(_NO_MLM_HEAD)
  return lambda x, ids: model.apply({"params": params}, x, ids,
                                    method=BertEncoder.mlm_logits)


def pool_hidden(hidden: Array, mask: Array, pooling: str) -> Array:
  """[B, T, H], mask [B, T] -> [B, H]: first position ("cls") or masked mean.

  "cls" takes position 0, which is [CLS] / <s> unless a prompt was prefixed
  (then it is the first prompt vector, as in PEFT's prompt tuning).
  """
  if pooling == "cls":
    return hidden[:, 0]
  if pooling == "mean":
    weights = mask.astype(jnp.float32)[..., None]  # [B, T, 1]
    total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    return (total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)).astype(hidden.dtype)
  raise ValueError(f"Unknown pooling {pooling!r}; expected one of {POOLINGS}.")


class ClassificationHead(nn.Module):
  """Trainable classifier (or regressor, num_classes=1) on pooled features.

  HF's `BertForSequenceClassification` is pooling="cls", use_pooler=True.
  Parameters `dense/{kernel [H, C], bias [C]}` have the replicated axes
  ("prompt_embed", "head_classes") like every trainable method parameter.

  Attributes:
    num_classes: C; 1 for regression (logits[:, 0] is the prediction).
    pooling: "cls" (first position) or "mean" (masked mean).
    use_pooler: pass the pooled vector through the backbone's frozen tanh
      pooler first (give `pooler=pooler_fn(model, params)` when calling).
    dropout_rate: dropout before the classifier (HF: hidden dropout, 0.1).
    param_dtype: storage dtype of the head.
  """
  num_classes: int
  pooling: str = "cls"
  use_pooler: bool = False
  dropout_rate: float = 0.1
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array, mask: Array, *,
               pooler: Optional[Callable[[Array], Array]] = None,
               deterministic: bool = True) -> Array:
    """hidden [B, T, H]; mask [B, T] -> logits [B, C] float32."""
    if self.num_classes < 1:
      raise ValueError(f"ClassificationHead.num_classes must be >= 1, got "
                       f"{self.num_classes}.")
    features = pool_hidden(hidden, mask, self.pooling)  # [B, H]
    if self.use_pooler:
      if pooler is None:
        raise ValueError("ClassificationHead(use_pooler=True) needs the backbone's "
                         "pooler: call it with pooler=bert.pooler_fn(model, params).")
      features = pooler(features)
    features = nn.Dropout(rate=self.dropout_rate)(features, deterministic=deterministic)
    return Dense((self.num_classes,), ("prompt_embed", "head_classes"), name="dense",
                 dtype=jnp.float32, param_dtype=self.param_dtype)(features)


def mask_positions(input_ids: Any, mask_token_id: int, offset: int = 0) -> Any:
  """Index [B] of each row's mask token, plus `offset` (e.g. a prefix's P).

  With concrete (numpy) ids, a row without exactly one mask token raises;
  traced ids are not checked (the first mask token is taken).
  """
  if isinstance(input_ids, np.ndarray):
    counts = (input_ids == mask_token_id).sum(axis=1)
    bad = np.nonzero(counts != 1)[0]
    if bad.size:
      raise ValueError(f"Rows {bad.tolist()[:10]} have {counts[bad].tolist()[:10]} "
                       f"mask tokens (id {mask_token_id}); each needs exactly one.")
    return np.argmax(input_ids == mask_token_id, axis=1) + offset
  return jnp.argmax(input_ids == mask_token_id, axis=1) + offset


class VerbalizerHead(nn.Module):
  """Label-word scoring: MLM logits of one label token per class at the mask
  position (LM-BFF / PET style). No trainable parameters.

  Attributes:
    label_token_ids: C vocabulary ids, one per class (distinct).
  """
  label_token_ids: Sequence[int]

  @nn.compact
  def __call__(self, hidden: Array, positions: Array, *,
               mlm: Callable[[Array, Array], Array],
               deterministic: bool = True) -> Array:
    """hidden [B, T', H]; positions [B] (mask token index in the encoder
    output, see `mask_positions`); mlm = `mlm_fn(model, params)`.

    Returns logits [B, C] float32.
    """
    del deterministic
    ids = list(self.label_token_ids)
    if not ids or not all(isinstance(i, (int, np.integer)) for i in ids):
      raise ValueError(f"VerbalizerHead.label_token_ids must be a non-empty list of "
                       f"ints (one vocabulary id per class), got {ids!r}.")
    if len(set(ids)) != len(ids):
      raise ValueError(f"VerbalizerHead.label_token_ids {ids} repeat an id; classes "
                       "would be indistinguishable.")
    features = jnp.take_along_axis(hidden, positions[:, None, None], axis=1)[:, 0]
    return mlm(features, jnp.asarray(ids, jnp.int32))  # [B, C]
