"""Prompt tuning (Lester et al., 2021): a learned [P, H] soft prompt.

Dimension letters: B batch, P prompt length, H embed width, Pd decoder prompt
length.

A `SoftPrompt` owns a `[P, H]` parameter with replicated logical axes
`("prompt", "prompt_embed")`, so it can always be written as one `.npy`. Its
hooks put the prompt on the backbone's input stack (`HookSpec.input_stack`);
the frozen backbone never knows about prompts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import initializers
from ptuning_jax.methods import common

Array = jax.Array


class SoftPrompt(nn.Module):
  """Lester et al. prompt tuning: a learned `[P, H]` prompt on the input.

  Attributes:
    spec: the backbone's hook spec (every method takes it first, so runs
      build methods as `method(spec=backbone.spec)` and gin binds only the
      method's own hyper-parameters).
    length: P, the number of prompt vectors.
    initializer: initialiser (see `initializers`); default sampled vocabulary.
    placement: "prefix" (default), "prefix_after_bos" or "suffix".
    decoder_length: Pd > 0 adds a decoder-side prompt of that length
      (prepended to the decoder input embeddings of an encoder-decoder).
    decoder_initializer: initialiser of the decoder-side prompt.
  """
  spec: hooks_lib.HookSpec
  length: int = 100
  initializer: initializers.Initializer = dataclasses.field(
      default_factory=initializers.sampled_vocab)
  placement: str = "prefix"
  decoder_length: int = 0
  decoder_initializer: Optional[initializers.Initializer] = None

  @nn.compact
  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    """Hooks for a batch of `batch_size` examples (the method interface, see
    `ptuning_jax.methods`); `deterministic` and `batch` are unused here."""
    del deterministic, batch
    embed_dim = self.spec.embed_dim
    prompt = initializers.prompt_param(self, "prompt", self.initializer,
                                       (self.length, embed_dim), context)  # [P, H]
    hooks = common.prompt_hooks(self.spec, prompt, self.placement)
    if self.decoder_length:
      dec = initializers.prompt_param(
          self, "decoder_prompt", self.decoder_initializer or self.initializer,
          (self.decoder_length, embed_dim), context)  # [Pd, H]
      hooks = hooks.merge(common.decoder_prompt_hooks(self.spec, dec, batch_size))
    return hooks
