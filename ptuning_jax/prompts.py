"""Soft prompts (Lester et al., 2021): parameters, initialisers, placements.

Dimension letters: B batch, T input length, P prompt length, H embed (d_model),
V vocabulary.

A `SoftPrompt` owns a `[P, H]` parameter with replicated logical axes
`("prompt", "prompt_embed")`, so it can always be written as one `.npy`. It
returns `hooks.Hooks` whose `encoder_inputs` combines the prompt with the
embedded input; the frozen backbone never knows about prompts.

Initialisers have the signature `init(rng, shape, context) -> [P, H]`, where
`context` (an `InitContext`) carries the frozen embedding table and the
vocabulary, which the vocabulary-based initialisers need.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax import hooks as hooks_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class InitContext:
  """What vocabulary-aware initialisers may read.

  Attributes:
    embedding: [V, H] the frozen token embedding table.
    vocab: a tokenizer with `encode(str) -> list[int]` (`ptuning_jax.vocab`).
  """
  embedding: Any = None
  vocab: Any = None

  def require_embedding(self, who: str) -> np.ndarray:
    if self.embedding is None:
      raise ValueError(f"{who} needs the backbone's token embedding table; none given.")
    return np.asarray(self.embedding, dtype=np.float32)

  def require_vocab(self, who: str):
    if self.vocab is None:
      raise ValueError(f"{who} needs a vocabulary to tokenize its text; none given.")
    return self.vocab


Initializer = Callable[[Array, tuple[int, int], InitContext], Array]


# ------------------------------ initialisers --------------------------------


def random_uniform(minval: float = 0.0, maxval: float = 0.5) -> Initializer:
  """U[minval, maxval). The JAX anchor (prompt-tuning) draws from [0, 0.5)."""
  def init(rng, shape, context):
    del context
    return jax.random.uniform(rng, shape, jnp.float32, minval, maxval)
  return init


def normal(stddev: float = 1.0) -> Initializer:
  """N(0, stddev^2); PEFT's RANDOM init is N(0, 1)."""
  def init(rng, shape, context):
    del context
    return stddev * jax.random.normal(rng, shape, jnp.float32)
  return init


def sampled_vocab(population_size: int = 5000) -> Initializer:
  """Rows of the embedding table sampled without replacement from the first
  `population_size` ids (SentencePiece orders pieces by frequency)."""
  def init(rng, shape, context):
    table = context.require_embedding("sampled_vocab")
    return _sample_rows(rng, table, shape[0], population_size)
  return init


def _sample_rows(rng, table: np.ndarray, count: int, population_size: int) -> Array:
  population = min(population_size, table.shape[0])
  if count == 0:
    return jnp.zeros((0, table.shape[1]), jnp.float32)
  replace = count > population
  ids = jax.random.choice(rng, population, (count,), replace=replace)
  return jnp.asarray(table)[ids]  # [count, H]


def _embed_text(table: np.ndarray, vocab, text: str, who: str) -> np.ndarray:
  ids = list(vocab.encode(text))
  if not ids:
    raise ValueError(f"{who}: {text!r} tokenizes to no pieces.")
  if max(ids) >= table.shape[0]:
    raise ValueError(f"{who}: {text!r} has ids beyond the embedding table "
                     f"({max(ids)} >= {table.shape[0]}); wrong vocabulary?")
  return table[np.asarray(ids)]  # [pieces, H]


def class_labels(labels: Sequence[str], population_size: int = 5000) -> Initializer:
  """The first len(labels) rows are the label embeddings (multi-piece labels
  averaged over their pieces); remaining rows are sampled vocabulary."""
  labels = tuple(labels)

  def init(rng, shape, context):
    table = context.require_embedding("class_labels")
    vocab = context.require_vocab("class_labels")
    if len(labels) > shape[0]:
      raise ValueError(f"class_labels: {len(labels)} labels do not fit a prompt "
                       f"of length {shape[0]}.")
    rows = [_embed_text(table, vocab, label, "class_labels").mean(0)
            for label in labels]
    rest = _sample_rows(rng, table, shape[0] - len(rows), population_size)
    return jnp.concatenate([jnp.asarray(np.stack(rows)), rest], axis=0)
  return init


def text(prompt_text: str, population_size: int = 5000) -> Initializer:
  """Embeddings of the pieces of `prompt_text`; remaining rows sampled."""
  def init(rng, shape, context):
    table = context.require_embedding("text")
    vocab = context.require_vocab("text")
    rows = _embed_text(table, vocab, prompt_text, "text")
    if rows.shape[0] > shape[0]:
      raise ValueError(f"text: {prompt_text!r} has {rows.shape[0]} pieces, more "
                       f"than the prompt length {shape[0]}.")
    rest = _sample_rows(rng, table, shape[0] - rows.shape[0], population_size)
    return jnp.concatenate([jnp.asarray(rows), rest], axis=0)
  return init


def from_file(path: str) -> Initializer:
  """A saved `.npy` prompt (e.g. from `numpy/<step>/` of a checkpoint)."""
  def init(rng, shape, context):
    del rng, context
    try:
      value = np.load(path)
    except FileNotFoundError:
      raise FileNotFoundError(f"from_file: prompt file {path} does not exist.") from None
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f"from_file: {path} holds shape {value.shape}; the prompt "
                       f"needs {tuple(shape)}.")
    return jnp.asarray(value, jnp.float32)
  return init


# ------------------------------ placements ----------------------------------


def prefix(prompt: Array, x: Array, tokens: Array, mask: Array) -> tuple[Array, Array]:
  """Prompt before the input.

  Args:
    prompt: [B, P, H] the prompt.
    x: [B, T, H] the embedded input.
    tokens: [B, T] input ids (unused).
    mask: [B, T] input mask.
  Returns:
    ([B, P + T, H], [B, P + T]).
  """
  del tokens
  prompt_mask = jnp.ones(prompt.shape[:2], mask.dtype)
  return (jnp.concatenate([prompt.astype(x.dtype), x], axis=1),
          jnp.concatenate([prompt_mask, mask], axis=1))


def prefix_after_bos(prompt, x, tokens, mask):
  """Prompt after the first input token (the BOS of models that have one)."""
  del tokens
  prompt_mask = jnp.ones(prompt.shape[:2], mask.dtype)
  x_out = jnp.concatenate([x[:, :1], prompt.astype(x.dtype), x[:, 1:]], axis=1)
  mask_out = jnp.concatenate([mask[:, :1], prompt_mask, mask[:, 1:]], axis=1)
  return x_out, mask_out  # [B, P + T, H], [B, P + T]


def suffix(prompt, x, tokens, mask):
  """Prompt right after each example's last real token (after its EOS).

  Example b of length l_b becomes [x_0 .. x_{l-1}, p_0 .. p_{P-1}, pad ...].
  """
  del tokens
  batch, length = mask.shape
  p = prompt.shape[1]
  lengths = jnp.sum(mask > 0, axis=1)[:, None]  # [B, 1]
  pos = jnp.arange(length + p)[None, :]  # [1, T + P]
  in_x = pos < lengths
  in_prompt = (pos >= lengths) & (pos < lengths + p)
  x_idx = jnp.clip(pos, 0, length - 1)
  p_idx = jnp.clip(pos - lengths, 0, p - 1)
  gathered_x = jnp.take_along_axis(
      x, jnp.broadcast_to(x_idx, (batch, length + p))[..., None], axis=1)
  gathered_p = jnp.take_along_axis(prompt.astype(x.dtype), p_idx[..., None], axis=1)
  out = jnp.where(in_x[..., None], gathered_x,
                  jnp.where(in_prompt[..., None], gathered_p, 0))
  return out, (in_x | in_prompt).astype(mask.dtype)  # [B, T + P, H], [B, T + P]


PLACEMENTS = {"prefix": prefix, "prefix_after_bos": prefix_after_bos,
              "suffix": suffix}


def get_placement(name: str):
  if name not in PLACEMENTS:
    raise ValueError(f"Unknown prompt placement {name!r}; expected one of "
                     f"{sorted(PLACEMENTS)}.")
  return PLACEMENTS[name]


# ------------------------------ modules -------------------------------------


def prompt_param(module: nn.Module, name: str, init: Initializer,
                 shape: tuple[int, ...], context: InitContext,
                 axes: tuple[Optional[str], ...] = ("prompt", "prompt_embed")
                 ) -> Array:
  """A replicated prompt-method parameter of `module` (default `[P, H]`).

  When the parameter exists (apply), it is returned as is: Flax would
  otherwise trace the initialiser abstractly to re-box it, and the
  vocabulary-based initialisers need a context that apply does not have.
  Every method parameter whose initialiser reads `context` must be created
  through this helper. `axes` are its logical axis names (one per dimension;
  prompt-method axes are always replicated, see `partitioning.PROMPT_AXES`).
  """
  if len(axes) != len(shape):
    raise ValueError(f"prompt_param {name!r}: {len(axes)} axis names {axes} for "
                     f"a parameter of shape {shape}.")
  if not module.is_initializing() and module.has_variable("params", name):
    return nn.meta.unbox(module.get_variable("params", name))
  def checked(rng, shape):
    value = init(rng, shape, context)
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f"{type(module).__name__}: the initialiser of {name!r} returned "
                       f"shape {tuple(value.shape)}, expected {tuple(shape)}.")
    return value
  boxed = nn.with_logical_partitioning(checked, tuple(axes))
  return module.param(name, boxed, shape)


class SoftPrompt(nn.Module):
  """Lester et al. prompt tuning: a learned `[P, H]` prompt on the encoder input.

  Attributes:
    backbone_config: the backbone's config (any object with `d_model`); every
      method takes it, so runs can build methods without repeating dims.
    length: P, the number of prompt vectors.
    initializer: initialiser (see above); default sampled vocabulary.
    placement: "prefix" (default), "prefix_after_bos" or "suffix".
    decoder_length: Pd > 0 adds a decoder-side prompt of that length
      (prepended to the decoder input embeddings).
    decoder_initializer: initialiser of the decoder-side prompt.
  """
  backbone_config: Any
  length: int = 100
  initializer: Initializer = dataclasses.field(default_factory=sampled_vocab)
  placement: str = "prefix"
  decoder_length: int = 0
  decoder_initializer: Optional[Initializer] = None

  @nn.compact
  def __call__(self, batch_size: int, context: InitContext = InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    """Hooks for a batch of `batch_size` examples (the method interface, see
    `ptuning_jax.methods`); `deterministic` and `batch` are unused here."""
    del deterministic, batch
    embed_dim = self.backbone_config.d_model
    prompt = prompt_param(self, "prompt", self.initializer,
                          (self.length, embed_dim), context)  # [P, H]
    combine = get_placement(self.placement)

    def encoder_inputs(x, tokens, mask):
      tiled = jnp.broadcast_to(prompt[None], (x.shape[0],) + prompt.shape)  # [B, P, H]
      return combine(tiled, x, tokens, mask)

    decoder_prefix = None
    if self.decoder_length:
      dec = prompt_param(self, "decoder_prompt", self.decoder_initializer or self.initializer,
                         (self.decoder_length, embed_dim), context)
      decoder_prefix = jnp.broadcast_to(dec[None], (batch_size,) + dec.shape)
    return hooks_lib.Hooks(encoder_inputs=encoder_inputs,
                           decoder_prefix=decoder_prefix)
