"""The T5 family (original T5, T5 1.1, mT5) as a Flax Linen encoder-decoder.

Numerically it follows Hugging Face's `T5ForConditionalGeneration` (checked
to 1e-4 in float32 by tests/backbones/t5_test.py): pre-norm RMS layer norms, no
attention score scaling, a bucketed relative position bias computed once
per stack (bidirectional in the encoder, causal in the decoder) and shared by
all its layers, a ReLU (original) or gated tanh-GELU (T5 1.1) MLP, and either
a tied output head scaled by d_model**-0.5 (original T5) or a separate
unscaled `lm_head` (T5 1.1, mT5); `T5Config` can also express the other two
combinations that transformers 5 loads (tied unscaled, untied scaled). See
`layers` for why Linen with logical partitioning.

Parameter tree (`params[...]`):
  token_embedder/embedding [V, H]
  encoder/relpos_bias/rel_embedding [R, N]
  encoder/layers_{i}/{pre_attention_layer_norm, attention, pre_mlp_layer_norm, mlp}
  encoder/encoder_norm/scale [H]
  decoder/relpos_bias/rel_embedding [R, N]
  decoder/layers_{i}/{pre_self_attention_layer_norm, self_attention,
                      pre_cross_attention_layer_norm, encoder_decoder_attention,
                      pre_mlp_layer_norm, mlp}
  decoder/decoder_norm/scale [H]
  logits_dense/kernel [H, V]          (untied models only)

Hooks (`hooks.Hooks`; `hook_spec` declares the sites; empty hooks give the
plain model bit for bit):
  * inputs["encoder"]: applied to the embedded encoder input; the returned
    mask is the encoder mask (self- and cross-attention) from then on.
  * prefix["decoder"]: prepended to the embedded decoder input; relative
    positions and causal masking include it; its logits are dropped.
  * kv_prefixes at "encoder/self", "decoder/self", "decoder/cross": per layer
    keys/values, always attended; zero position bias, or with
    `positions="past"` the bias of positions -P .. -1 before the sequence
    (self-attention sites; cross-attention has no position bias); (IA)^3
    scales do not apply to them.
  * layer_inputs["encoder" | "decoder"]: hidden states entering every layer.
    The decoder passes an all-ones mask; in cached decoding the hook sees only
    the new positions, so it must act position-wise there.
  * scales at "{site}/k", "{site}/v" and "{stack}/mlp": multiply the
    projected keys / values and the MLP hidden activation (after the
    activation, before `wo`).

Dimension letters:
  B batch, T encoder length, S decoder length, P prompt / prefix length,
  H d_model, N heads, D head dim (d_kv), F MLP dim (d_ff), V vocabulary,
  L layers of one stack, R relative-position buckets.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.backbones import config_checks
from ptuning_jax.backbones import layers

Array = jax.Array
NO_HOOKS = hooks_lib.NO_HOOKS

FEED_FORWARDS = ("gated-gelu", "relu")
MODEL_TYPES = ("t5", "mt5")
# feed_forward -> (activation, gated) of `layers.MlpBlock`.
FEED_FORWARD_ACTIVATIONS = {"gated-gelu": ("gelu_new", True), "relu": ("relu", False)}
REMAT_POLICIES = layers.REMAT_POLICIES
ATTENTION_IMPLS = layers.ATTENTION_IMPLS
MT5_VOCAB_SIZE = 250112


@dataclasses.dataclass(frozen=True)
class T5Config(config_checks.Numerics):
  """Architecture and numerics of one T5-family model.

  Attributes:
    vocab_size: V.
    d_model: H.
    num_heads: N.
    d_kv: D (N * D need not equal H).
    d_ff: F.
    num_encoder_layers: encoder depth.
    num_decoder_layers: decoder depth.
    relative_attention_num_buckets: R.
    relative_attention_max_distance: distances beyond share one bucket.
    feed_forward: "gated-gelu" (T5 1.1, mT5; tanh-approximate GELU as HF's
      "gelu_new") or "relu" (original T5).
    tie_word_embeddings: True: the output head is the token embedding
      (original T5; also T5 1.1 / mT5 as transformers 5 saves a model built
      from a config). False: a separate `logits_dense` head (T5 1.1, mT5).
    scale_decoder_outputs: decoder outputs are scaled by d_model**-0.5
      before the head. None: transformers' default for `model_type`, i.e.
      `tie_word_embeddings` for "t5" (original T5 tied and scaled, T5 1.1
      untied and unscaled) and False for "mt5" (never scaled).
    model_type: Hugging Face model type, "t5" or "mt5"; export writes it back.
    dropout_rate: dropout everywhere HF T5 has it.
    layer_norm_epsilon: RMS norm epsilon.
    dtype: activation (compute) dtype name.
    param_dtype: parameter storage dtype name.
    pad_token_id: padding id (encoder mask is tokens != pad).
    eos_token_id: end of sequence.
    decoder_start_token_id: first decoder input.
    remat_policy: one of REMAT_POLICIES (per layer rematerialisation).
    attention_impl: one of ATTENTION_IMPLS ("xla" einsum path, "fused_xla",
      "cudnn", "auto"; see `layers`).
  """
  vocab_size: int = 32128
  d_model: int = 768
  num_heads: int = 12
  d_kv: int = 64
  d_ff: int = 2048
  num_encoder_layers: int = 12
  num_decoder_layers: int = 12
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  feed_forward: str = "gated-gelu"
  tie_word_embeddings: bool = False
  scale_decoder_outputs: Optional[bool] = None
  model_type: str = "t5"
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0
  remat_policy: str = "none"
  attention_impl: str = "xla"

  def __post_init__(self):
    config_checks.positive_ints(self, (
        "vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers",
        "num_decoder_layers", "relative_attention_num_buckets",
        "relative_attention_max_distance"))
    if self.relative_attention_num_buckets < 4:
      raise ValueError("T5Config.relative_attention_num_buckets must be >= 4, got "
                       f"{self.relative_attention_num_buckets}.")
    if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
      raise ValueError(
          "T5Config.relative_attention_max_distance must exceed "
          f"relative_attention_num_buckets // 2 = {self.relative_attention_num_buckets // 2}; "
          f"got {self.relative_attention_max_distance}.")
    config_checks.choice(self, "feed_forward", FEED_FORWARDS)
    config_checks.choice(self, "remat_policy", tuple(REMAT_POLICIES))
    config_checks.choice(self, "attention_impl", ATTENTION_IMPLS)
    config_checks.float_dtypes(self)
    config_checks.rates(self, ("dropout_rate",))
    if not isinstance(self.tie_word_embeddings, bool):
      raise ValueError("T5Config.tie_word_embeddings must be a bool, got "
                       f"{self.tie_word_embeddings!r}.")
    if not isinstance(self.scale_decoder_outputs, (bool, type(None))):
      raise ValueError("T5Config.scale_decoder_outputs must be None or a bool, got "
                       f"{self.scale_decoder_outputs!r}.")
    config_checks.choice(self, "model_type", MODEL_TYPES)
    if self.model_type == "mt5" and self.scale_decoder_outputs:
      raise ValueError("T5Config.scale_decoder_outputs=True with model_type='mt5': "
                       "transformers' MT5ForConditionalGeneration never scales.")

  @property
  def scales_outputs(self) -> bool:
    """Whether decoder outputs are scaled by d_model**-0.5 before the head."""
    if self.scale_decoder_outputs is not None:
      return self.scale_decoder_outputs
    return self.tie_word_embeddings and self.model_type == "t5"


def with_overrides(config: T5Config, **fields) -> T5Config:
  """`config` with run-level overrides (dtype, param_dtype, dropout_rate,
  remat_policy, attention_impl)."""
  return dataclasses.replace(config, **fields)


def _t5_1_1(d_model, num_heads, d_kv, d_ff, layers_, **kw) -> T5Config:
  return T5Config(d_model=d_model, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff,
                  num_encoder_layers=layers_, num_decoder_layers=layers_, **kw)


# T5 1.1 dims (also mT5's). "tiny" is deliberately odd for tests.
SIZES: dict[str, T5Config] = {
    "tiny": T5Config(vocab_size=101, d_model=12, num_heads=3, d_kv=5, d_ff=20,
                     num_encoder_layers=2, num_decoder_layers=3,
                     relative_attention_num_buckets=8,
                     relative_attention_max_distance=20),
    "small": _t5_1_1(512, 6, 64, 1024, 8),
    "base": _t5_1_1(768, 12, 64, 2048, 12),
    "large": _t5_1_1(1024, 16, 64, 2816, 24),
    "xl": _t5_1_1(2048, 32, 64, 5120, 24),
    "xxl": _t5_1_1(4096, 64, 64, 10240, 24),
}

# Original T5 (t5-small ... t5-11b): ReLU MLP, tied and scaled output head.
ORIGINAL_SIZES: dict[str, T5Config] = {
    name: _t5_1_1(*dims, feed_forward="relu", tie_word_embeddings=True)
    for name, dims in {
        "small": (512, 8, 64, 2048, 6),
        "base": (768, 12, 64, 3072, 12),
        "large": (1024, 16, 64, 4096, 24),
        "3b": (1024, 32, 128, 16384, 24),
        "11b": (1024, 128, 128, 65536, 24),
    }.items()
}


def _lookup(table: dict, name: str, family: str) -> T5Config:
  if name not in table:
    raise ValueError(f"Unknown {family} size {name!r}; expected one of {sorted(table)}.")
  return table[name]


def get_config(name: str, **overrides) -> T5Config:
  """T5 1.1 preset `name` (a key of SIZES) with field overrides."""
  return dataclasses.replace(_lookup(SIZES, name, "T5 1.1"), **overrides)


def mt5_config(size: str, **overrides) -> T5Config:
  """mT5 preset: T5 1.1 dims with the 250112-entry vocabulary."""
  return get_config(size, **{"vocab_size": MT5_VOCAB_SIZE, "model_type": "mt5",
                             **overrides})


def original_t5_config(size: str, **overrides) -> T5Config:
  """Original T5 preset (small, base, large, 3b, 11b)."""
  return dataclasses.replace(_lookup(ORIGINAL_SIZES, size, "original T5"), **overrides)


def num_params(config: T5Config) -> int:
  """Parameter count, analytically (matches `jax.eval_shape` of init and HF)."""
  h, f = config.d_model, config.d_ff
  inner = config.num_heads * config.d_kv
  attention = 4 * h * inner
  mlp = (3 if config.feed_forward == "gated-gelu" else 2) * h * f
  encoder_layer = attention + mlp + 2 * h
  decoder_layer = 2 * attention + mlp + 3 * h
  relpos = config.relative_attention_num_buckets * config.num_heads
  embeddings = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
  return (embeddings + 2 * relpos + 2 * h
          + config.num_encoder_layers * encoder_layer
          + config.num_decoder_layers * decoder_layer)


def presets_table() -> str:
  """Text table of every preset and its parameter count."""
  rows = [("preset", "d_model", "heads", "d_kv", "d_ff", "layers", "vocab", "params")]
  presets = ([(f"t5_1_1-{k}", v) for k, v in SIZES.items()]
             + [(f"mt5-{k}", mt5_config(k)) for k in SIZES if k != "tiny"]
             + [(f"t5-{k}", v) for k, v in ORIGINAL_SIZES.items()])
  for name, c in presets:
    rows.append((name, c.d_model, c.num_heads, c.d_kv, c.d_ff,
                 f"{c.num_encoder_layers}/{c.num_decoder_layers}", c.vocab_size,
                 f"{num_params(c):,}"))
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
  return "\n".join(
      "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                for i, (v, w) in enumerate(zip(r, widths)))
      for r in rows)


# -------------------------------- hook spec ---------------------------------


def hook_spec(config: T5Config) -> hooks_lib.HookSpec:
  """What a T5 offers methods: encoder and decoder stacks, attention sites
  "encoder/self", "decoder/self" (relative bias) and "decoder/cross"; input
  prompts go to the encoder."""
  stacks, attention = [], []
  for name, depth, causal in (("encoder", config.num_encoder_layers, False),
                              ("decoder", config.num_decoder_layers, True)):
    stacks.append(hooks_lib.StackSpec(name, depth, config.d_model, config.d_ff, causal))
    kinds = ("self",) if name == "encoder" else ("self", "cross")
    for kind in kinds:
      attention.append(hooks_lib.AttentionSpec(
          name, kind, depth, config.num_heads, config.num_heads, config.d_kv,
          "relative_bias" if kind == "self" else "none"))
  return hooks_lib.HookSpec("t5", config.d_model, config.vocab_size, "encoder",
                            tuple(stacks), tuple(attention))


def _kv(layer_hooks: hooks_lib.LayerHooks, kind: str,
        prefix_bias: Optional[Array] = None):
  """(key, value[, bias]) of one layer's prefix at `kind`, or None."""
  kv = layer_hooks.kv.get(kind)
  if kv is None or prefix_bias is None:
    return kv
  return kv + (prefix_bias,)


def _prefix_bias(relpos: nn.Module, prefix: Optional[hooks_lib.KVPrefix],
                 q_len: int, k_len: int, q_offset: Any = 0) -> Optional[Array]:
  """[1, N, Q, P] bias of prefix keys at positions -P .. -1, or None.

  Only for `positions="past"`: the queries (at q_offset + [0, Q)) and keys
  [0, K) shift by P so the prefix occupies [0, P), which is how transformers'
  T5 biases a `past_key_values` cache of P entries.
  """
  if prefix is None or prefix.positions == "none":
    return None
  plen = prefix.key.shape[2]
  full = relpos(q_len, plen + k_len, q_offset=plen + q_offset)  # [1, N, Q, P + K]
  return full[..., :plen]


def _module_kwargs(config: T5Config) -> dict:
  return dict(dtype=config.compute_dtype, param_dtype=config.params_dtype)


def _norm(config: T5Config, name: str) -> layers.RMSNorm:
  return layers.RMSNorm(epsilon=config.layer_norm_epsilon, name=name,
                        **_module_kwargs(config))


def _attention(config: T5Config, name: str, is_cross: bool = False):
  return layers.MultiHeadAttention(
      num_heads=config.num_heads, head_dim=config.d_kv,
      dropout_rate=config.dropout_rate, is_cross=is_cross,
      attention_impl=config.attention_impl, name=name, **_module_kwargs(config))


def _residual(config: T5Config, x: Array, h: Array, deterministic: bool) -> Array:
  """x + dropout(h), the residual connection of every sublayer: [B, T, H]."""
  h = nn.Dropout(rate=config.dropout_rate)(h, deterministic=deterministic)
  return layers.constrain(x + h, layers.BATCH_LENGTH_EMBED)


def _mlp(config: T5Config) -> layers.MlpBlock:
  activation, gated = FEED_FORWARD_ACTIVATIONS[config.feed_forward]
  return layers.MlpBlock(d_ff=config.d_ff, activation=activation, gated=gated,
                         dropout_rate=config.dropout_rate, name="mlp",
                         **_module_kwargs(config))


# ---------------------------------- layers ----------------------------------


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + MLP block of the encoder."""
  config: T5Config

  @nn.compact
  def __call__(self, x, bias, mask, layer_hooks, prefix_bias, deterministic):
    """x: [B, T, H]; bias [1, N, T, T]; mask [B, 1, 1, T]; layer_hooks: this
    layer's `hooks.LayerHooks`; prefix_bias [1, N, T, P] or None. Returns
    [B, T, H]."""
    cfg = self.config
    h = _norm(cfg, "pre_attention_layer_norm")(x)
    h = _attention(cfg, "attention")(
        h, h, bias, mask, _kv(layer_hooks, "self", prefix_bias),
        layer_hooks.scale("self/k"), layer_hooks.scale("self/v"),
        deterministic=deterministic)
    x = _residual(cfg, x, h, deterministic)
    h = _norm(cfg, "pre_mlp_layer_norm")(x)
    h = _mlp(cfg)(h, layer_hooks.scale("mlp"), deterministic=deterministic)
    return _residual(cfg, x, h, deterministic)


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention + cross-attention + MLP block."""
  config: T5Config

  @nn.compact
  def __call__(self, y, encoded, self_bias, self_mask, cross_mask, layer_hooks,
               prefix_bias, cache_index, deterministic, decode_mode):
    """y: [B, S, H]; encoded [B, T, H]; self_bias [1, N, S, K]; self_mask
    [1, 1, S, K]; cross_mask [B, 1, 1, T]; layer_hooks as in EncoderLayer;
    prefix_bias [1, N, S, P] or None; cache_index int scalar or None;
    decode_mode None | "init" | "step". Returns [B, S, H]."""
    cfg = self.config
    h = _norm(cfg, "pre_self_attention_layer_norm")(y)
    h = _attention(cfg, "self_attention")(
        h, h, self_bias, self_mask, _kv(layer_hooks, "self", prefix_bias),
        layer_hooks.scale("self/k"), layer_hooks.scale("self/v"),
        deterministic=deterministic, decode_mode=decode_mode, cache_index=cache_index)
    y = _residual(cfg, y, h, deterministic)
    h = _norm(cfg, "pre_cross_attention_layer_norm")(y)
    h = _attention(cfg, "encoder_decoder_attention", is_cross=True)(
        h, encoded, None, cross_mask, _kv(layer_hooks, "cross"),
        layer_hooks.scale("cross/k"), layer_hooks.scale("cross/v"),
        deterministic=deterministic, decode_mode=decode_mode)
    y = _residual(cfg, y, h, deterministic)
    h = _norm(cfg, "pre_mlp_layer_norm")(y)
    h = _mlp(cfg)(h, layer_hooks.scale("mlp"), deterministic=deterministic)
    return _residual(cfg, y, h, deterministic)


# ---------------------------------- stacks ----------------------------------


class Encoder(nn.Module):
  """Encoder stack over already embedded inputs."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, stack: hooks_lib.StackHooks,
               deterministic: bool) -> Array:
    """x: [B, T, H] embedded inputs; mask: [B, T] bool; stack: the encoder's
    hook values -> [B, T, H]."""
    cfg = self.config
    length = x.shape[1]
    relpos = layers.RelativePositionBias(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, bidirectional=True, param_dtype=cfg.params_dtype,
        name="relpos_bias")
    bias = relpos(length, length)  # [1, N, T, T]
    attention_mask = mask[:, None, None, :]  # [B, 1, 1, T]
    prefix_bias = _prefix_bias(relpos, stack.kv_prefixes.get("self"), length,
                               length)  # [1, N, T, P]
    layer_cls = layers.remat(EncoderLayer, cfg.remat_policy, static_argnums=(6,))
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)
    for i in range(cfg.num_encoder_layers):
      x = stack.apply_layer_inputs(i, x, mask)
      x = layer_cls(cfg, name=f"layers_{i}")(
          x, bias, attention_mask, stack.layer(i), prefix_bias, deterministic)
    x = _norm(cfg, "encoder_norm")(x)
    return nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Decoder stack over already embedded inputs; returns final hidden states.

  With `decode=True` the stack keeps `index` (next position) in the "cache"
  collection: the first such call (no cache yet) allocates the caches for its
  full length and stores the cross-attention keys/values; later calls write
  their chunk at `index` and attend causally over the cache.
  """
  config: T5Config

  @nn.compact
  def __call__(self, y: Array, encoded: Array, encoder_mask: Array,
               stack: hooks_lib.StackHooks, deterministic: bool,
               decode: bool = False) -> Array:
    """y: [B, S, H] embedded decoder inputs; encoded [B, T, H];
    encoder_mask [B, T]; stack: the decoder's hook values -> [B, S, H]."""
    cfg = self.config
    length = y.shape[1]
    relpos = layers.RelativePositionBias(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, bidirectional=False, param_dtype=cfg.params_dtype,
        name="relpos_bias")
    decode_mode, cache_index, key_length = None, None, length
    if decode:
      decode_mode = "step" if self.has_variable("cache", "index") else "init"
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    if decode_mode == "step":
      cache_index = index.value
      max_length = self._cache_length()
      positions = cache_index + jnp.arange(length)  # [S]
      self_mask = (jnp.arange(max_length)[None, :]
                   <= positions[:, None])[None, None]  # [1, 1, S, K]
      self_bias = relpos(length, max_length, q_offset=cache_index)
      key_length = max_length
      index.value = cache_index + length
    else:
      self_mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
      self_bias = relpos(length, length)  # [1, N, S, S]
    cross_mask = encoder_mask[:, None, None, :]  # [B, 1, 1, T]
    prefix_bias = _prefix_bias(
        relpos, stack.kv_prefixes.get("self"), length, key_length,
        0 if cache_index is None else cache_index)  # [1, N, S, P]
    layer_cls = layers.remat(DecoderLayer, "none" if decode else cfg.remat_policy,
                             static_argnums=(9, 10))
    y = nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=deterministic)
    y = layers.constrain(y, layers.BATCH_LENGTH_EMBED)
    token_mask = jnp.ones(y.shape[:2], bool)
    for i in range(cfg.num_decoder_layers):
      y = stack.apply_layer_inputs(i, y, token_mask)
      y = layer_cls(cfg, name=f"layers_{i}")(
          y, encoded, self_bias, self_mask, cross_mask, stack.layer(i), prefix_bias,
          cache_index, deterministic, decode_mode)
    y = _norm(cfg, "decoder_norm")(y)
    return nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=deterministic)

  def _cache_length(self) -> int:
    cache = self.variables["cache"]["layers_0"]["self_attention"]["cached_key"]
    return cache.shape[1]


# ---------------------------------- model -----------------------------------


class T5(nn.Module):
  """T5 encoder-decoder. Call with `model.apply({"params": params}, ...)`.

  Attributes:
    config: the architecture.
  """
  config: T5Config

  @property
  def spec(self) -> hooks_lib.HookSpec:
    return hook_spec(self.config)

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.d_model,
                                       **_module_kwargs(cfg))
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    if not cfg.tie_word_embeddings:
      self.logits_dense = layers.DenseGeneral(
          features=(cfg.vocab_size,), kernel_axes=("embed", "vocab"), stddev=1.0,
          output_dtype=jnp.float32, **_module_kwargs(cfg))

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array, *,
               hooks: hooks_lib.Hooks = NO_HOOKS,
               deterministic: bool = True) -> Array:
    """Teacher-forced logits.

    Args:
      encoder_input_tokens: [B, T] int ids (pad 0 marks padding).
      decoder_input_tokens: [B, S] int ids (shifted targets).
      hooks: injection points of prompt methods.
      deterministic: disables dropout (else pass rngs={"dropout": key}).
    Returns:
      logits [B, S, V] float32.
    """
    encoded, encoder_mask = self.encode(encoder_input_tokens, hooks=hooks,
                                        deterministic=deterministic)
    return self.decode(encoded, encoder_mask, decoder_input_tokens, hooks=hooks,
                       deterministic=deterministic)

  def encode(self, encoder_input_tokens: Array, *,
             hooks: hooks_lib.Hooks = NO_HOOKS,
             deterministic: bool = True) -> tuple[Array, Array]:
    """Encoder pass.

    Args:
      encoder_input_tokens: [B, T] int ids.
      hooks: `inputs["encoder"]` may change the length to T'.
      deterministic: disables dropout.
    Returns:
      (encoded [B, T', H], encoder_mask [B, T'] bool).
    """
    if encoder_input_tokens.ndim != 2:
      raise ValueError("encoder_input_tokens must be [B, T]; got shape "
                       f"{encoder_input_tokens.shape}.")
    mask = encoder_input_tokens != self.config.pad_token_id  # [B, T]
    x = self.token_embedder(encoder_input_tokens)  # [B, T, H]
    x, mask = hooks_lib.apply_inputs(self.spec, hooks, "encoder", x,
                                     encoder_input_tokens, mask)
    stack = hooks_lib.stack_hooks(self.spec, hooks, "encoder")
    return self.encoder(x, mask, stack, deterministic), mask

  def decode(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array,
             *, hooks: hooks_lib.Hooks = NO_HOOKS, deterministic: bool = True,
             decode: bool = False, return_hidden: bool = False):
    """Decoder pass.

    With `decode=True`, the first call (no "cache" collection given; pass
    `mutable=["cache"]`) allocates the cache for the call's full length
    (Pd + S) and stores the cross-attention keys/values of `encoded`; later
    calls (cache given) process S new positions each. `hooks.prefix["decoder"]`
    is prepended by every call that carries it: give it to the allocation
    call and the first (prefill) call only (`Hooks.without_prefix`).

    Args:
      encoded: [B, T, H].
      encoder_mask: [B, T] bool.
      decoder_input_tokens: [B, S] int ids.
      hooks: decoder-side injection points.
      deterministic: disables dropout.
      decode: autoregressive cached mode.
      return_hidden: also return the final hidden states.
    Returns:
      logits [B, S, V] float32 (prefix positions dropped); with
      `return_hidden`, (logits, hidden [B, S, H]).
    """
    cfg = self.config
    if decoder_input_tokens.ndim != 2:
      raise ValueError("decoder_input_tokens must be [B, S]; got shape "
                       f"{decoder_input_tokens.shape}.")
    stack = hooks_lib.stack_hooks(self.spec, hooks, "decoder")
    y = self.token_embedder(decoder_input_tokens)  # [B, S, H]
    prefix = hooks.prefix.get("decoder")
    prefix_len = 0
    if prefix is not None:
      if prefix.shape[0] != y.shape[0]:
        raise ValueError(f"hooks.prefix['decoder'] has shape {prefix.shape}; expected "
                         f"[B={y.shape[0]}, Pd, H={cfg.d_model}].")
      prefix_len = prefix.shape[1]
      y = jnp.concatenate([prefix.astype(y.dtype), y], axis=1)  # [B, Pd + S, H]
    h = self.decoder(y, encoded, encoder_mask.astype(bool), stack, deterministic,
                     decode)
    hidden = h[:, prefix_len:]  # [B, S, H]
    h = hidden * (cfg.d_model ** -0.5) if cfg.scales_outputs else hidden
    if cfg.tie_word_embeddings:
      logits = self.token_embedder.attend(h)
    else:
      logits = self.logits_dense(h)
    logits = layers.constrain(logits.astype(jnp.float32), layers.BATCH_LENGTH_VOCAB)
    return (logits, hidden) if return_hidden else logits


def main() -> None:
  print(presets_table())


if __name__ == "__main__":
  main()
