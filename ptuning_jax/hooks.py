"""The one seam between frozen backbones and trainable methods.

A backbone declares what it offers in a `HookSpec`: its stacks (depth, widths,
causal or not), its attention sites (heads, key/value heads, head dim, how
keys are positioned) and the stack whose token inputs take prompts. A method
sizes itself from the spec alone (never from a backbone's config field names)
and returns `Hooks`: values for some of the spec's sites. The backbone applies
them and never knows the method. Empty hooks give the plain backbone bit for
bit.

Site names (namespaced by stack, so several stacks never collide):
  stacks             "encoder", "decoder" (later "vision", "text", ...)
  attention sites    "{stack}/self", "{stack}/cross"
  scale sites        "{attention site}/k", "{attention site}/v", "{stack}/mlp"

Per-layer hook values are arrays with a leading layer axis [L, ...], so a
backbone may index them in a Python loop or scan over them: `stack_hooks`
gathers what one stack needs into a `StackHooks` pytree and
`StackHooks.layer(i)` slices one layer's `LayerHooks`.

Dimension letters:
  B batch, T length of a stack's sequence (T' after an `inputs` hook), H
  hidden width, P prompt / prefix length, L layers of one stack, N query heads,
  K key/value heads, D head dim, F MLP width, W a scale site's width (K D or F).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax

Array = jax.Array

# How a stack positions its keys: T5's bucketed relative bias, learned absolute
# positions (BERT, GPT-2, ViT), rotary embeddings (Llama), or none
# (cross-attention keys).
POSITION_KINDS = ("relative_bias", "absolute", "rotary", "none")
# Where prefix keys sit (see KVPrefix).
PREFIX_POSITIONS = ("none", "past")
ATTENTION_KINDS = ("self", "cross")

# (embedded [B, T, H], tokens [B, T], mask [B, T]) -> (embedded [B, T', H], mask [B, T'])
InputsFn = Callable[[Array, Array, Array], tuple[Array, Array]]
# (one layer's values, hidden [B, T, H], mask [B, T]) -> hidden [B, T, H]
LayerInputsFn = Callable[[Any, Array, Array], Array]


# ---------------------------------------------------------------- the spec


@dataclasses.dataclass(frozen=True)
class StackSpec:
  """One stack of layers.

  Attributes:
    name: "encoder", "decoder", ...
    num_layers: L.
    hidden_dim: H of its hidden states.
    mlp_dim: F of its feed-forward blocks.
    causal: its self-attention is causal (decoders).
    takes_inputs: it embeds tokens, so `inputs` / `prefix` hooks apply to it.
  """
  name: str
  num_layers: int
  hidden_dim: int
  mlp_dim: int
  causal: bool = False
  takes_inputs: bool = True


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """One attention site ("{stack}/{kind}"), the same in every layer of its stack.

  Attributes:
    stack: the stack it belongs to.
    kind: "self" or "cross".
    num_layers: L.
    num_heads: N query heads.
    num_kv_heads: K key/value heads (K < N: grouped-query attention).
    head_dim: D.
    positions: how its keys are positioned (one of POSITION_KINDS).
  """
  stack: str
  kind: str
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  positions: str

  @property
  def name(self) -> str:
    return f"{self.stack}/{self.kind}"

  def kv_shape(self, length: int) -> tuple[int, int, int, int]:
    """[L, P, K, D] of a key (or value) prefix of length P."""
    return (self.num_layers, length, self.num_kv_heads, self.head_dim)


@dataclasses.dataclass(frozen=True)
class HookSpec:
  """What a backbone offers to methods.

  Attributes:
    family: the backbone family ("t5", "bert", ...).
    embed_dim: H of the token embeddings, i.e. of input prompt vectors.
    vocab_size: V of the token embedding table.
    input_stack: the stack whose token inputs carry the task's input (and
      so the input prompts): "encoder" for T5 and BERT, "decoder" for a
      decoder-only model.
    stacks: every stack.
    attention: every attention site.
  """
  family: str
  embed_dim: int
  vocab_size: int
  input_stack: str
  stacks: tuple[StackSpec, ...]
  attention: tuple[AttentionSpec, ...]

  def __post_init__(self):
    names = [s.name for s in self.stacks]
    if self.input_stack not in names:
      raise ValueError(f"HookSpec.input_stack={self.input_stack!r} is not one of the "
                       f"stacks {names}.")
    for site in self.attention:
      if site.stack not in names or site.kind not in ATTENTION_KINDS:
        raise ValueError(f"HookSpec: attention site {site.name!r} is not on a stack "
                         f"of {names} or not one of {ATTENTION_KINDS}.")
      if site.positions not in POSITION_KINDS:
        raise ValueError(f"HookSpec: {site.name}.positions={site.positions!r}; "
                         f"expected one of {POSITION_KINDS}.")
      if site.num_heads % site.num_kv_heads:
        raise ValueError(f"HookSpec: {site.name} has {site.num_heads} heads, not a "
                         f"multiple of its {site.num_kv_heads} key/value heads.")

  # ---- lookups ----

  def stack(self, name: str) -> StackSpec:
    for stack in self.stacks:
      if stack.name == name:
        return stack
    raise ValueError(f"The {self.family} backbone has no stack {name!r}; it has "
                     f"{[s.name for s in self.stacks]}.")

  def site(self, name: str) -> AttentionSpec:
    for site in self.attention:
      if site.name == name:
        return site
    raise ValueError(f"The {self.family} backbone has no attention site {name!r}; "
                     f"it has {list(self.attention_sites)}.")

  @property
  def attention_sites(self) -> tuple[str, ...]:
    return tuple(site.name for site in self.attention)

  @property
  def self_attention_sites(self) -> tuple[str, ...]:
    return tuple(site.name for site in self.attention if site.kind == "self")

  @property
  def scale_sites(self) -> tuple[str, ...]:
    """Every (IA)^3-style scale site: keys and values of each attention site,
    then the MLP hidden activation of each stack."""
    return (tuple(f"{site.name}/{part}" for site in self.attention for part in "kv")
            + tuple(f"{stack.name}/mlp" for stack in self.stacks))

  def scale_shape(self, name: str) -> tuple[int, int]:
    """[L, W] of a scale site: W = K D for keys / values, F for the MLP."""
    head, _, part = name.rpartition("/")
    if part == "mlp":
      stack = self.stack(head)
      return stack.num_layers, stack.mlp_dim
    if part not in ("k", "v") or head not in self.attention_sites:
      raise ValueError(f"Unknown scale site {name!r} of the {self.family} backbone; "
                       f"expected one of {list(self.scale_sites)}.")
    site = self.site(head)
    return site.num_layers, site.num_kv_heads * site.head_dim

  def default_prompt_stack(self) -> StackSpec:
    return self.stack(self.input_stack)

  # ---- validation ----

  def check(self, hooks: "Hooks") -> None:
    """Raises ValueError naming the first hook value that does not fit."""
    for kind, mapping in (("inputs", hooks.inputs), ("prefix", hooks.prefix)):
      for name in mapping:
        if not self.stack(name).takes_inputs:
          raise ValueError(f"hooks.{kind}[{name!r}]: stack {name!r} of the "
                           f"{self.family} backbone takes no token inputs.")
    for name, value in hooks.prefix.items():
      if value.ndim != 3 or value.shape[2] != self.stack(name).hidden_dim:
        raise ValueError(f"hooks.prefix[{name!r}] has shape {tuple(value.shape)}; "
                         f"expected [B, P, H={self.stack(name).hidden_dim}].")
    for name, prefix in hooks.kv_prefixes.items():
      site = self.site(name)
      for part in ("key", "value"):
        shape = tuple(getattr(prefix, part).shape)
        want = site.kv_shape(shape[2] if len(shape) == 5 else 0)
        if len(shape) != 5 or (shape[0],) + shape[2:] != want:
          raise ValueError(
              f"hooks.kv_prefixes[{name!r}].{part} has shape {shape}; expected "
              f"[L={want[0]}, B, P, K={want[2]}, D={want[3]}].")
      if prefix.key.shape != prefix.value.shape:
        raise ValueError(f"hooks.kv_prefixes[{name!r}] key {prefix.key.shape} and "
                         f"value {prefix.value.shape} shapes differ.")
    for name, layer_inputs in hooks.layer_inputs.items():
      depth = self.stack(name).num_layers
      for leaf in jax.tree_util.tree_leaves(layer_inputs.values):
        if not leaf.shape or leaf.shape[0] != depth:
          raise ValueError(f"hooks.layer_inputs[{name!r}] has a value of shape "
                           f"{tuple(leaf.shape)}; every value needs the leading "
                           f"layer axis L={depth}.")
    for name, value in hooks.scales.items():
      want = self.scale_shape(name)
      if tuple(value.shape) != want:
        raise ValueError(f"hooks.scales[{name!r}] has shape {tuple(value.shape)}; "
                         f"expected [L, W] = {want}.")


# ---------------------------------------------------------------- the hooks


@dataclasses.dataclass(frozen=True)
class KVPrefix:
  """Per-layer key/value prefixes of one attention site.

  Attributes:
    key: [L, B, P, K, D] keys prepended to the site's keys in every layer.
    value: [L, B, P, K, D] values prepended likewise.
    positions: where the prefix keys sit for a position-aware site:
      "none" (default): no position (zero relative bias);
      "past": positions -P .. -1 before the sequence, as a `past_key_values`
      cache of P entries is treated by transformers (Hugging Face PEFT prefix
      tuning). Sites whose keys carry no position ignore it.
  Prefix keys are always attended (mask 1); queries never attend "from" them,
  so output lengths do not change.
  """
  key: Array
  value: Array
  positions: str = "none"

  def __post_init__(self):
    if self.positions not in PREFIX_POSITIONS:
      raise ValueError(f"KVPrefix.positions={self.positions!r}; expected one of "
                       f"{PREFIX_POSITIONS}.")


@dataclasses.dataclass(frozen=True)
class LayerInputs:
  """A transform of the hidden states entering every layer of one stack.

  Attributes:
    values: a pytree whose leaves have the leading layer axis [L, ...]; layer
      l receives the slice l (after the `inputs` hook at layer 0), so deep
      per-layer prompts (e.g. replacing the prompt positions at every layer)
      need no Python layer index and the stack may be scanned.
    fn: `fn(values_l, hidden [B, T, H], mask [B, T]) -> hidden [B, T, H]`.
      In cached decoding it sees only the new positions.
  """
  values: Any
  fn: LayerInputsFn


@dataclasses.dataclass(frozen=True)
class Hooks:
  """Everything a method may inject into a frozen backbone, keyed by site.

  Attributes:
    inputs: stack -> fn on its embedded token inputs (before dropout and the
      first layer): it may prepend, insert or append prompt vectors and add
      offsets, returning the new embeddings and the matching mask. Prompt
      tuning, DePT, low-rank and residual prompts.
    prefix: stack -> [B, P, H] embeddings prepended to the stack's embedded
      inputs whose outputs are dropped, so outputs keep their length (a
      decoder-side prompt; cached decoding prefills it).
    kv_prefixes: attention site -> KVPrefix (P-Tuning v2 / prefix tuning).
    layer_inputs: stack -> LayerInputs (deep per-layer input prompts).
    scales: scale site -> [L, W]; multiplies that activation elementwise
      ((IA)^3): projected keys / values [L, K D], MLP hidden [L, F].
  """
  inputs: Mapping[str, InputsFn] = dataclasses.field(default_factory=dict)
  prefix: Mapping[str, Array] = dataclasses.field(default_factory=dict)
  kv_prefixes: Mapping[str, KVPrefix] = dataclasses.field(default_factory=dict)
  layer_inputs: Mapping[str, LayerInputs] = dataclasses.field(default_factory=dict)
  scales: Mapping[str, Array] = dataclasses.field(default_factory=dict)

  @property
  def empty(self) -> bool:
    return not any(getattr(self, f.name) for f in dataclasses.fields(self))

  def merge(self, other: "Hooks") -> "Hooks":
    """Combines two hook sets (composed methods): `inputs` of one stack chain
    (self's first); any other site set by both raises."""
    fields = {}
    for f in dataclasses.fields(self):
      a, b = getattr(self, f.name), getattr(other, f.name)
      clash = set(a) & set(b)
      if clash and f.name != "inputs":
        raise ValueError(f"Both hook sets set {f.name} sites {sorted(clash)}.")
      merged = {**a, **b}
      for site in clash:
        merged[site] = _chain_inputs(a[site], b[site])
      fields[f.name] = merged
    return Hooks(**fields)

  def without_prefix(self) -> "Hooks":
    """The same hooks without `prefix` (decoding steps after the prefill)."""
    return dataclasses.replace(self, prefix={})


def _chain_inputs(first: InputsFn, second: InputsFn) -> InputsFn:
  def chained(x, tokens, mask):
    x, mask = first(x, tokens, mask)
    return second(x, tokens, mask)
  return chained


NO_HOOKS = Hooks()


# ------------------------------------------------------- what a stack sees


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerHooks:
  """What one layer of one stack receives.

  Attributes:
    kv: attention kind ("self" / "cross") -> (key, value) [B, P, K, D].
    scales: "self/k", "self/v", "cross/k", "cross/v", "mlp" -> [W].
  """
  kv: Mapping[str, tuple[Array, Array]] = dataclasses.field(default_factory=dict)
  scales: Mapping[str, Array] = dataclasses.field(default_factory=dict)

  def scale(self, name: str) -> Optional[Array]:
    return self.scales.get(name)


@dataclasses.dataclass(frozen=True)
class StackHooks:
  """The per-layer hook values of one stack, each with leading axis [L, ...].

  Attributes:
    kv_prefixes: attention kind -> KVPrefix of the site "{stack}/{kind}".
    scales: "self/k", ..., "mlp" -> [L, W].
    layer_inputs: the stack's LayerInputs, or None.
  """
  kv_prefixes: Mapping[str, KVPrefix] = dataclasses.field(default_factory=dict)
  scales: Mapping[str, Array] = dataclasses.field(default_factory=dict)
  layer_inputs: Optional[LayerInputs] = None

  def layer(self, i: int) -> LayerHooks:
    """The hook values of layer `i`."""
    return LayerHooks(
        kv={kind: (p.key[i], p.value[i]) for kind, p in self.kv_prefixes.items()},
        scales={name: value[i] for name, value in self.scales.items()})

  def apply_layer_inputs(self, i: int, x: Array, mask: Array) -> Array:
    """The hidden states [B, T, H] entering layer `i`, after `layer_inputs`."""
    if self.layer_inputs is None:
      return x
    values = jax.tree_util.tree_map(lambda v: v[i], self.layer_inputs.values)
    out = self.layer_inputs.fn(values, x, mask)
    if out.shape != x.shape:
      raise ValueError(f"hooks.layer_inputs returned shape {out.shape} at layer {i}; "
                       f"it must keep the hidden shape {x.shape}.")
    return out.astype(x.dtype)


def stack_hooks(spec: HookSpec, hooks: Hooks, stack: str) -> StackHooks:
  """Validates `hooks` against `spec` and gathers the values of `stack`."""
  spec.check(hooks)
  start = stack + "/"
  kv = {name[len(start):]: p for name, p in hooks.kv_prefixes.items()
        if name.startswith(start)}
  scales = {name[len(start):]: v for name, v in hooks.scales.items()
            if name.startswith(start)}
  return StackHooks(kv_prefixes=kv, scales=scales,
                    layer_inputs=hooks.layer_inputs.get(stack))


def apply_inputs(spec: HookSpec, hooks: Hooks, stack: str, x: Array, tokens: Array,
                 mask: Array) -> tuple[Array, Array]:
  """Applies `hooks.inputs[stack]` to embedded inputs x [B, T, H] with their
  mask [B, T] (a no-op without one); checks what it returns."""
  fn = hooks.inputs.get(stack)
  if fn is None:
    return x, mask
  batch, _, width = x.shape
  out, out_mask = fn(x, tokens, mask)  # [B, T', H], [B, T']
  if out.ndim != 3 or out.shape[0] != batch or out.shape[2] != width:
    raise ValueError(f"hooks.inputs[{stack!r}] returned embeddings of shape "
                     f"{out.shape}; expected [B={batch}, T', H={width}].")
  if out_mask.shape != out.shape[:2]:
    raise ValueError(f"hooks.inputs[{stack!r}] returned a mask of shape "
                     f"{out_mask.shape} for embeddings of shape {out.shape}; "
                     f"expected {out.shape[:2]}.")
  return out.astype(x.dtype), out_mask.astype(bool)
