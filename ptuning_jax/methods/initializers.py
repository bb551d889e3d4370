"""Prompt initialisers: how a trainable prompt-method parameter starts.

Dimension letters: P prompt length, H embed width (`HookSpec.embed_dim`),
V vocabulary.

Initialisers have the signature `init(rng, shape, context) -> [P, H]`, where
`context` (an `InitContext`) carries the frozen embedding table and the
vocabulary, which the vocabulary-based initialisers need. `prompt_param`
creates a method parameter from one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class InitContext:
  """What vocabulary-aware initialisers may read.

  Attributes:
    embedding: [V, H] the frozen token embedding table.
    vocab: a tokenizer with `encode(str) -> list[int]` (`ptuning_jax.data.vocab`).
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


def sampled_vocab(population_size: int = 5000, first_id: int = 0) -> Initializer:
  """Lester et al.'s sampled-vocabulary init: rows of the embedding table
  sampled without replacement from ids [first_id, first_id + population_size)
  (SentencePiece orders pieces by frequency, so first_id 0 takes T5's most
  frequent pieces; a BERT WordPiece vocabulary starts with [PAD], [unused*]
  and single characters, so its real word pieces start at 1996, "the")."""
  def init(rng, shape, context):
    table = context.require_embedding("sampled_vocab")
    return _sample_rows(rng, table, shape[0], population_size, first_id)
  return init


def _sample_rows(rng, table: np.ndarray, count: int, population_size: int,
                 first_id: int = 0) -> Array:
  population = min(population_size, table.shape[0] - first_id)
  if population < 1:
    raise ValueError(f"sampled_vocab: first_id={first_id} is beyond the embedding "
                     f"table ({table.shape[0]} rows).")
  if count == 0:
    return jnp.zeros((0, table.shape[1]), jnp.float32)
  replace = count > population
  ids = first_id + jax.random.choice(rng, population, (count,), replace=replace)
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
