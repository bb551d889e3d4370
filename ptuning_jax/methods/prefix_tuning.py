"""P-Tuning v2 / prefix tuning: trainable key/value prefixes in every layer.

Li & Liang (2021) and Liu et al. (P-Tuning v2, 2022) prepend `P` learned key
and value vectors to the keys and values of every attention layer
("deep prompts"); the frozen model attends to them like extra tokens.
Here the prefixes go to any attention sites of the backbone
(`HookSpec.attention_sites`, e.g. T5's "encoder/self", "decoder/self",
"decoder/cross"); the default is the self-attention of the input stack
("encoder/self" for T5 and BERT). Prefixes are sized by each site's
key/value heads K, so grouped-query attention gets K, not N, heads.

Dimension letters: B batch, P prefix length, H embed width, L layers of the
site's stack, K key/value heads, D head dim, M reparameterisation hidden
size.

Parameters, per site (a submodule named after the site, "/" -> "_"):
  direct (default):           key, value          [L, P, K, D]
  reparameterised (M > 0):    embedding           [P, H]
                              hidden/{kernel [H, M], bias [M]}
                              out/{kernel [M, 2 L K D], bias [2 L K D]}
  with  kv = tanh(embedding @ W_h + b_h) @ W_o + b_o  ([P, 2 L K D], viewed
  as [P, L, 2, K, D]: entry 2 l is layer l's key, 2 l + 1 its value, the
  layout of P-Tuning v2's `PrefixEncoder` and PEFT's `PrefixTuningConfig`).

Trainable parameters per site: 2 L P K D directly; P H + H M + M
+ M 2 L K D + 2 L K D with the MLP. `fold` computes the prefixes once and
returns a direct-parameter method with identical outputs, so inference
carries only 2 L P K D numbers per site.

Prefix dropout (P-Tuning v2 applies dropout to its `past_key_values`):
`dropout_rate` drops prefix entries independently per example.

Relative position bias: by default (`positions="none"`) prefix keys get zero
bias. PEFT / transformers feed the prefix as a past key/value cache, which T5
treats as real earlier positions -P .. -1; `positions="past"` does the same
(`hooks.KVPrefix.positions`; see `tests/methods/peft_parity_test.py`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import initializers
from ptuning_jax.methods import common

Array = jax.Array
Params = Any

KV_AXES = ("prompt_layers", "prompt", None, "prompt_kv")  # [L, P, K, D]


def module_name(site: str) -> str:
  """The submodule (parameter subtree) name of a site: "decoder/cross" ->
  "decoder_cross"."""
  return site.replace("/", "_")


def _site_prefix(spec: hooks_lib.HookSpec, site: str, method: "PrefixTuning",
                 **kwargs) -> "_SitePrefix":
  attention = spec.site(site)
  return _SitePrefix(num_layers=attention.num_layers, length=method.length,
                     num_heads=attention.num_kv_heads, head_dim=attention.head_dim,
                     embed_dim=spec.embed_dim, projection_hidden=method.projection_hidden,
                     initializer=method.initializer, **kwargs)


class _SitePrefix(nn.Module):
  """The prefixes of one attention site."""
  num_layers: int
  length: int
  num_heads: int
  head_dim: int
  embed_dim: int
  projection_hidden: int
  initializer: initializers.Initializer

  @nn.compact
  def __call__(self, context: initializers.InitContext) -> tuple[Array, Array]:
    """Returns (key, value), each [L, P, N, D] float32."""
    shape = (self.num_layers, self.length, self.num_heads, self.head_dim)
    if not self.projection_hidden:
      key = initializers.prompt_param(self, "key", self.initializer, shape, context, KV_AXES)
      value = initializers.prompt_param(self, "value", self.initializer, shape, context,
                                   KV_AXES)
      return key.astype(jnp.float32), value.astype(jnp.float32)
    emb = initializers.prompt_param(self, "embedding", self.initializer,
                               (self.length, self.embed_dim), context)  # [P, H]
    h = jnp.tanh(common.Dense(self.projection_hidden, name="hidden")(emb))  # [P, M]
    flat = common.Dense(2 * self.num_layers * self.num_heads * self.head_dim,
                        kernel_axes=("prompt_mlp", "prompt_kv"), name="out")(h)
    return split_flat_prefix(flat, self.num_layers, self.num_heads, self.head_dim)


def split_flat_prefix(flat: Array, num_layers: int, num_heads: int,
                      head_dim: int) -> tuple[Array, Array]:
  """[P, 2 L N D] (P-Tuning v2 / PEFT layout) -> (key, value) [L, P, N, D]."""
  length = flat.shape[0]
  kv = flat.reshape(length, num_layers, 2, num_heads, head_dim)  # [P, L, 2, N, D]
  kv = jnp.transpose(kv, (2, 1, 0, 3, 4))  # [2, L, P, N, D]
  return kv[0], kv[1]


class PrefixTuning(nn.Module):
  """Deep key/value prefixes (P-Tuning v2 / prefix tuning).

  Attributes:
    spec: the backbone's hook spec (its attention sites and their shapes).
    length: P, prefix length per layer.
    sites: attention sites that get prefixes (subset of
      `spec.attention_sites`); None: the input stack's self-attention.
    projection_hidden: M > 0 reparameterises the prefixes with an MLP
      (Li & Liang; P-Tuning v2 `prefix_projection`, hidden 512); 0 (default,
      as in P-Tuning v2) trains the prefixes directly.
    dropout_rate: prefix dropout during training.
    initializer: of the direct prefixes or of the MLP's input embedding;
      default N(0, 1) (`torch.nn.Embedding`, as in P-Tuning v2 and PEFT).
    positions: relative-position placement of the prefix keys
      (`hooks.PREFIX_POSITIONS`): "none" (zero bias) or "past" (positions
      -P .. -1, as transformers' T5 treats PEFT's prefix cache).
  """
  spec: hooks_lib.HookSpec
  length: int = 20
  sites: Optional[Sequence[str]] = None
  projection_hidden: int = 0
  dropout_rate: float = 0.0
  initializer: initializers.Initializer = dataclasses.field(
      default_factory=lambda: initializers.normal(1.0))
  positions: str = "none"

  def resolved_sites(self) -> tuple[str, ...]:
    """The sites that get prefixes (validated)."""
    sites = (f"{self.spec.input_stack}/self",) if self.sites is None else tuple(self.sites)
    if not sites or len(set(sites)) != len(sites):
      raise ValueError(f"PrefixTuning.sites={sites!r} must be non-empty and unique.")
    for site in sites:
      common.check_choice("PrefixTuning", "sites", site, self.spec.attention_sites)
    return sites

  def _check(self) -> tuple[str, ...]:
    common.check_positive("PrefixTuning", length=self.length)
    sites = self.resolved_sites()
    common.check_choice("PrefixTuning", "positions", self.positions,
                        hooks_lib.PREFIX_POSITIONS)
    if self.projection_hidden < 0:
      raise ValueError(f"PrefixTuning.projection_hidden={self.projection_hidden} "
                       "must be >= 0.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"PrefixTuning.dropout_rate={self.dropout_rate} not in [0, 1).")
    return sites

  @nn.compact
  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    del batch
    dropout = nn.Dropout(rate=self.dropout_rate)
    kv_prefixes = {}
    for site in self._check():
      key, value = _site_prefix(self.spec, site, self, name=module_name(site))(context)
      key = jnp.broadcast_to(key[:, None], (key.shape[0], batch_size) + key.shape[1:])
      value = jnp.broadcast_to(value[:, None], key.shape)  # [L, B, P, K, D]
      if self.dropout_rate:
        key = dropout(key, deterministic=deterministic)
        value = dropout(value, deterministic=deterministic)
      kv_prefixes[site] = hooks_lib.KVPrefix(key=key, value=value,
                                             positions=self.positions)
    return hooks_lib.Hooks(kv_prefixes=kv_prefixes)


def fold(method: PrefixTuning, params: Params) -> tuple[PrefixTuning, Params]:
  """Replaces the MLP reparameterisation by the prefixes it computes.

  Args:
    method: a `PrefixTuning`.
    params: its (unboxed) trainable parameters.
  Returns:
    (the same method with `projection_hidden=0`, {site: {key, value}}), which
    gives identical hooks; unchanged when there is no reparameterisation.
  """
  if not method.projection_hidden:
    return method, params
  params = nn.meta.unbox(params)
  folded = {}
  for site in method.resolved_sites():
    module = _site_prefix(method.spec, site, method)
    key, value = module.apply({"params": params[module_name(site)]},
                              initializers.InitContext())
    folded[module_name(site)] = {"key": key, "value": value}
  return method.clone(projection_hidden=0), folded


def num_params(spec: hooks_lib.HookSpec, length: int,
               sites: Optional[Sequence[str]] = None, projection_hidden: int = 0) -> int:
  """The formula: sum over sites of 2 L P K D (direct) or the MLP's count."""
  total = 0
  for site in ((f"{spec.input_stack}/self",) if sites is None else sites):
    attention = spec.site(site)
    kv = 2 * attention.num_layers * attention.num_kv_heads * attention.head_dim
    if projection_hidden:
      h, m = spec.embed_dim, projection_hidden
      total += length * h + h * m + m + m * kv + kv
    else:
      total += length * kv
  return total
