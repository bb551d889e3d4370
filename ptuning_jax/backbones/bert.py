"""The BERT family (BERT, RoBERTa, XLM-R, MiniLM) as a Flax Linen encoder.

Numerically it follows Hugging Face's `BertModel` / `RobertaModel` (checked
to 1e-4 in float32 by tests/backbones/bert_test.py on the real all-MiniLM-L6-v2 weights
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

Hooks (`hooks.Hooks`; `hook_spec` declares the sites; empty hooks give the
plain model bit for bit):
  * `inputs["encoder"](x, tokens, mask)` is called on the *word* embeddings,
    before position embeddings, the segment-0 token-type embedding, the
    embedding LayerNorm and dropout, which are then applied to the returned
    sequence. This is what Hugging Face PEFT does for BERT-family models
    (`inputs_embeds = prompt ⊕ word embeddings`, `token_type_ids` zero-padded
    for the prompt): prompt vectors get position ids by their place in the
    new sequence, the segment-0 embedding and the LayerNorm, exactly like
    real tokens. A token of segment s reaches the hook as its word embedding
    plus `type_emb[s] - type_emb[0]`, so any placement keeps its segment.
  * `kv_prefixes["encoder/self"]`: per-layer key/value prefixes
    [L, B, P, K, D] (P-Tuning v2 deep prompts), always attended, never
    queried. They are not part of the sequence, so position ids do not move
    (P-Tuning v2's code passes them as HF `past_key_values`, which also
    shifts BERT's position ids by P; tests/backbones/bert_test.py checks
    equality with HF's cache path given explicit positions).
  * `layer_inputs["encoder"]` on the hidden states entering every layer.
  * `scales["encoder/self/k" | "encoder/self/v"]` [L, N * D] on the projected
    keys / values (bias included, before prefixes are prepended);
    `scales["encoder/mlp"]` [L, F] on the MLP activation ((IA)^3).

Positions. `position_offset == 0` (BERT): position ids are 0..T'-1.
`position_offset > 0` (RoBERTa, XLM-R: pad_token_id + 1): an attended token
gets `position_offset + (attended tokens before it)` and a masked one
`position_offset - 1` (the padding index). Hugging Face derives this from
`input_ids != pad_token_id`; we derive it from the attention mask (after the
`inputs` hook), which is the same for ordinary padded batches.

The frozen pooler and MLM head are offered to the trainable task heads of
`ptuning_jax.models.heads` as functions (`pooler_fn`, `mlm_fn`).

Dimension letters:
  B batch, T input length, T' length after the `inputs` hook (T plus P),
  P prompt / prefix length, H hidden size (d_model), N heads, D head dim,
  F MLP dim, V vocabulary, M max positions, Y token types, L layers,
  K keys (P + T'), C classes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.backbones import config_checks
from ptuning_jax.backbones import layers

Array = jax.Array
NO_HOOKS = hooks_lib.NO_HOOKS

ACTIVATIONS = ("gelu", "gelu_new", "relu")  # exact erf GELU, tanh approximation
REMAT_POLICIES = layers.REMAT_POLICIES
POOLINGS = ("cls", "mean")
# Initialiser scale of freshly created weights (HF `initializer_range`).
INIT_STDDEV = 0.02


@dataclasses.dataclass(frozen=True)
class BertConfig(config_checks.Numerics):
  """Architecture and numerics of one BERT-family encoder.

  Field names follow Hugging Face's `config.json`. Methods never read them:
  they size themselves from `hook_spec(config)`.

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
    config_checks.positive_ints(self, (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "max_position_embeddings", "type_vocab_size"))
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
    config_checks.rates(self, ("hidden_dropout_rate", "attention_dropout_rate"))
    config_checks.choice(self, "remat_policy", tuple(REMAT_POLICIES))
    config_checks.float_dtypes(self)

  @property
  def max_length(self) -> int:
    """Longest sequence T' the position table covers."""
    return self.max_position_embeddings - self.position_offset


def with_overrides(config: BertConfig, dropout_rate: Optional[float] = None,
                   **fields) -> BertConfig:
  """`config` with run-level overrides (dtype, param_dtype, remat_policy;
  `dropout_rate` sets both the hidden and the attention dropout)."""
  if dropout_rate is not None:
    fields.update(hidden_dropout_rate=dropout_rate, attention_dropout_rate=dropout_rate)
  return dataclasses.replace(config, **fields)


def num_params(config: BertConfig) -> int:
  """Parameter count, analytically (matches `jax.eval_shape` of init)."""
  h, f = config.hidden_size, config.intermediate_size
  layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h
  embeddings = (config.vocab_size + config.max_position_embeddings
                + config.type_vocab_size + 2) * h
  pooler = (h * h + h) if config.with_pooler else 0
  mlm = (h * h + 3 * h + config.vocab_size) if config.with_mlm_head else 0
  return embeddings + config.num_hidden_layers * layer + pooler + mlm


# --------------------------------- hook spec ---------------------------------


def hook_spec(config: BertConfig) -> hooks_lib.HookSpec:
  """What a BERT-family encoder offers methods: one stack "encoder" with the
  attention site "encoder/self" (absolute positions); input prompts go to it."""
  d = config.hidden_size // config.num_attention_heads
  stack = hooks_lib.StackSpec("encoder", config.num_hidden_layers, config.hidden_size,
                              config.intermediate_size)
  site = hooks_lib.AttentionSpec("encoder", "self", config.num_hidden_layers,
                                 config.num_attention_heads, config.num_attention_heads,
                                 d, "absolute")
  return hooks_lib.HookSpec("bert", config.hidden_size, config.vocab_size, "encoder",
                            (stack,), (site,))


def _normal(stddev: float = INIT_STDDEV):
  return nn.initializers.normal(stddev=stddev)


def _kwargs(config: BertConfig) -> dict:
  return dict(dtype=config.compute_dtype, param_dtype=config.params_dtype)


def _layer_norm(config: BertConfig, name: str) -> layers.LayerNorm:
  return layers.LayerNorm(epsilon=config.layer_norm_eps, name=name, **_kwargs(config))


def _dense(config: BertConfig, features: tuple[int, ...], axes: tuple[str, ...],
           name: Optional[str] = None) -> layers.DenseGeneral:
  return layers.DenseGeneral(features, axes, stddev=INIT_STDDEV, use_bias=True,
                             name=name, **_kwargs(config))


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
    """Embeds the input; applies the `inputs["encoder"]` hook.

    Args:
      input_ids: [B, T] int ids.
      mask: [B, T] bool, True = real token.
      token_type_ids: [B, T] int segment ids.
      hooks: `inputs["encoder"]` may change the length to T'.
      deterministic: disables dropout.
    Returns:
      (x [B, T', H] in the compute dtype, mask [B, T'] bool).
    """
    cfg = self.config
    dtype = cfg.compute_dtype
    x = jnp.take(self.word_embeddings, input_ids, axis=0).astype(dtype)  # [B, T, H]
    types = jnp.take(self.token_type_embeddings, token_type_ids, axis=0).astype(dtype)
    if "encoder" not in hooks.inputs:
      x = x + types
    else:
      type0 = self.token_type_embeddings[0].astype(dtype)  # [H]
      x, mask = hooks_lib.apply_inputs(hook_spec(cfg), hooks, "encoder",
                                       x + (types - type0), input_ids, mask)
      x = x.astype(dtype) + type0  # [B, T', H]
    length = x.shape[1]
    if length > cfg.max_length:
      raise ValueError(
          f"Sequence length {length} (after the inputs hook) exceeds the "
          f"{cfg.max_length} positions of this model (max_position_embeddings="
          f"{cfg.max_position_embeddings}, position_offset={cfg.position_offset}).")
    positions = position_ids(mask, cfg.position_offset)  # [B, T']
    x = x + jnp.take(self.position_embeddings, positions, axis=0).astype(dtype)
    x = self.dropout(self.layer_norm(x), deterministic=deterministic)
    return layers.constrain(x, layers.BATCH_LENGTH_EMBED), mask


# ----------------------------------- layers ----------------------------------


class Layer(nn.Module):
  """Post-LN block: x = LN(x + attn(x)); x = LN(x + mlp(x))."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask, layer_hooks, deterministic):
    """x: [B, T, H]; mask [B, T] bool; layer_hooks: this layer's
    `hooks.LayerHooks`. Returns [B, T, H]."""
    cfg = self.config
    d = cfg.hidden_size // cfg.num_attention_heads
    dropout = nn.Dropout(rate=cfg.hidden_dropout_rate)
    h = layers.MultiHeadAttention(
        num_heads=cfg.num_attention_heads, head_dim=d,
        dropout_rate=cfg.attention_dropout_rate, use_bias=True, score_scale=d ** -0.5,
        init_stddev=INIT_STDDEV, name="attention", **_kwargs(cfg))(
            x, x, None, mask[:, None, None, :], layer_hooks.kv.get("self"),
            layer_hooks.scale("self/k"), layer_hooks.scale("self/v"),
            deterministic=deterministic)
    x = _layer_norm(cfg, "attention_layer_norm")(
        x + dropout(h, deterministic=deterministic))
    x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)
    h = layers.MlpBlock(d_ff=cfg.intermediate_size, activation=cfg.hidden_act,
                        gated=False, use_bias=True, init_stddev=INIT_STDDEV, name="mlp",
                        **_kwargs(cfg))(x, layer_hooks.scale("mlp"))
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
    h = _dense(cfg, (cfg.hidden_size,), ("embed", "mlp"), "transform")(x)
    h = layers.activation(cfg.mlm_hidden_act or cfg.hidden_act)(h)
    h = _layer_norm(cfg, "layer_norm")(h)
    table = word_embeddings
    if vocab_ids is not None:
      table, bias = jnp.take(table, vocab_ids, axis=0), jnp.take(bias, vocab_ids)
    out = layers.stat_dtype(h.dtype)
    logits = jnp.einsum("...h,vh->...v", h, table.astype(cfg.compute_dtype),
                        preferred_element_type=out)
    return logits + bias.astype(out)


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
    layer_cls = layers.remat(Layer, cfg.remat_policy, static_argnums=(4,))
    self.layers = [layer_cls(cfg, name=f"layers_{i}")
                   for i in range(cfg.num_hidden_layers)]
    if cfg.with_pooler:
      self.pooler = _dense(cfg, (cfg.hidden_size,), ("embed", "mlp"))
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
    stack = hooks_lib.stack_hooks(hook_spec(cfg), hooks, "encoder")
    states = [x]
    for i, layer in enumerate(self.layers):
      x = stack.apply_layer_inputs(i, x, mask)
      x = layer(x, mask, stack.layer(i), deterministic)
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


# ------------------------------- frozen heads --------------------------------


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
