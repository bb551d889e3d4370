"""The two baselines of every method comparison, as methods.

  NoMethod       nothing trains in the backbone: with a task head this is the
                 head-only linear probe; without one, the frozen model itself.
  FullFinetune   every backbone parameter trains (plus the head, if any):
                 Devlin et al.'s fine-tuning, the reference PEFT claims
                 compare against. It also pretrains the demo's backbone.

Neither has parameters or hooks; the task model reads `trains_backbone` to
move the backbone's parameters into the trainable tree (`task_model`).
"""
from __future__ import annotations

from typing import Mapping, Optional

import flax.linen as nn
import jax

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import initializers

Array = jax.Array


class NoMethod(nn.Module):
  """No trainable parameters, no hooks (head-only probe / the frozen model).

  Attributes:
    spec: the backbone's hook spec (unused).
  """
  spec: hooks_lib.HookSpec
  trains_backbone = False

  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    del batch_size, context, deterministic, batch
    return hooks_lib.NO_HOOKS


class FullFinetune(NoMethod):
  """Full fine-tuning: the backbone's own parameters are the trainables."""
  trains_backbone = True
