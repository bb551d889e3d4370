"""Generic hook points a backbone consults; prompt methods fill them in.

The backbone (T5, BERT) knows these hooks, never the methods. A method turns
its trainable parameters into a `Hooks` value inside the jitted loss, and the
frozen backbone is applied with it. Empty hooks give the plain backbone bit for
bit.

Dimension letters:
  B batch, T encoder input length, S decoder length, H embed (d_model),
  P prompt length, L layers of one stack, N heads, D head dim (d_kv),
  F MLP hidden (d_ff).

Stacks are named "encoder" and "decoder" (BERT has only "encoder").
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

import jax

Array = jax.Array

# (embedded [B, T, H], tokens [B, T], mask [B, T]) -> (embedded [B, T', H], mask [B, T'])
InputsFn = Callable[[Array, Array, Array], tuple[Array, Array]]
# (stack, layer index, hidden [B, T, H], mask [B, T]) -> hidden [B, T, H]
LayerInputsFn = Callable[[str, int, Array, Array], Array]

# Names of the attention sites that accept key/value prefixes.
KV_SITES = ("encoder", "decoder_self", "decoder_cross")
# Names of the (IA)^3-style rescaling sites: "{stack}/{site}".
SCALE_SITES = (
    "encoder/k", "encoder/v", "encoder/mlp",
    "decoder/self_k", "decoder/self_v", "decoder/cross_k", "decoder/cross_v",
    "decoder/mlp",
)


# Where prefix keys sit for the relative position bias (see KVPrefix).
PREFIX_POSITIONS = ("none", "past")


@dataclasses.dataclass(frozen=True)
class KVPrefix:
  """Per-layer key/value prefixes for one attention site.

  Attributes:
    key: [L, B, Pk, N, D] keys prepended to the site's keys in every layer.
    value: [L, B, Pk, N, D] values prepended likewise.
    positions: how a relative-position-bias backbone (T5) places the prefix:
      "none" (default): prefix keys get zero position bias;
      "past": they occupy positions -Pk .. -1 before the sequence, so query
      q and prefix key j get the bias of distance (j - Pk) - q, exactly what
      transformers' T5 does with a `past_key_values` cache of Pk entries
      (Hugging Face PEFT prefix tuning). Attention sites without a position
      bias (T5 cross-attention, BERT) ignore it.
  Prefix positions are always attended (mask 1); queries never attend "from"
  them, so output lengths do not change.
  """
  key: Array
  value: Array
  positions: str = "none"

  def __post_init__(self):
    if self.positions not in PREFIX_POSITIONS:
      raise ValueError(f"KVPrefix.positions={self.positions!r}; expected one of "
                       f"{PREFIX_POSITIONS}.")


@dataclasses.dataclass(frozen=True)
class Hooks:
  """Everything a method may inject into a frozen backbone.

  Attributes:
    encoder_inputs: called on the embedded encoder input (after the token
      embedding, before dropout and the first layer). It may prepend, insert or
      append prompt vectors and add offsets; it returns the new embeddings and
      the matching mask. Used by prompt tuning, DePT, low-rank and residual
      prompts.
    decoder_prefix: [B, Pd, H] embeddings prepended to the decoder input
      embeddings (decoder-side prompt). Logits for these Pd positions are
      dropped, so outputs keep length S. Cached decoding prefills them.
    kv_prefixes: site name (see KV_SITES) -> KVPrefix. P-Tuning v2 / prefix
      tuning.
    layer_inputs: called on the hidden states entering every layer
      (layer > 0; layer 0 sees `encoder_inputs`). Deep per-layer input prompts.
    scales: site name (see SCALE_SITES) -> [L, N * D] for k/v sites or [L, F]
      for MLP sites; multiplies that activation elementwise ((IA)^3).
  """
  encoder_inputs: Optional[InputsFn] = None
  decoder_prefix: Optional[Array] = None
  kv_prefixes: Mapping[str, KVPrefix] = dataclasses.field(default_factory=dict)
  layer_inputs: Optional[LayerInputsFn] = None
  scales: Mapping[str, Array] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for site in self.kv_prefixes:
      if site not in KV_SITES:
        raise ValueError(f"Unknown kv_prefixes site {site!r}; expected one of {KV_SITES}.")
    for site in self.scales:
      if site not in SCALE_SITES:
        raise ValueError(f"Unknown scales site {site!r}; expected one of {SCALE_SITES}.")

  @property
  def empty(self) -> bool:
    return (self.encoder_inputs is None and self.decoder_prefix is None
            and not self.kv_prefixes and self.layer_inputs is None
            and not self.scales)

  def merge(self, other: "Hooks") -> "Hooks":
    """Combines two hook sets (for composed methods); conflicting fields raise."""
    fields = {}
    for f in dataclasses.fields(self):
      a, b = getattr(self, f.name), getattr(other, f.name)
      if isinstance(a, Mapping):
        clash = set(a) & set(b)
        if clash:
          raise ValueError(f"Both hook sets set {f.name} sites {sorted(clash)}.")
        fields[f.name] = {**a, **b}
      elif a is not None and b is not None:
        if f.name == "encoder_inputs":
          fields[f.name] = _chain_inputs(a, b)
        else:
          raise ValueError(f"Both hook sets set {f.name}.")
      else:
        fields[f.name] = a if a is not None else b
    return Hooks(**fields)


def _chain_inputs(first: InputsFn, second: InputsFn) -> InputsFn:
  def chained(x, tokens, mask):
    x, mask = first(x, tokens, mask)
    return second(x, tokens, mask)
  return chained


NO_HOOKS = Hooks()
