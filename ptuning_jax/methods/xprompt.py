"""XPrompt (Ma et al., EMNLP 2022): hierarchical structured pruning of a prompt.

A trained soft prompt P [P, H] is pruned at two granularities, under the
lottery ticket hypothesis:

  token level:  P'_i = gamma_i P_i                    gamma: [P] in {0, 1}
  piece level:  token i split into k contiguous pieces of H / k values
                (floor / ceil sizes if k does not divide H),
                P'_{i, j} = zeta_{i, j} P_{i, j}       zeta: [P, k] in {0, 1}

Importance of a mask entry is its expected sensitivity (Michel et al.'s
head-importance score, which XPrompt adopts), I = E_x |dL(x) / d gamma|,
evaluated at the current masks: `recipes.xprompt.importance_scores`
differentiates the batch
loss with respect to per-example copies of the masks (batch features
`xprompt_token_mask` [B, P], `xprompt_piece_mask` [B, P, k], all ones), so one
backward pass gives every example's gradient; scores sum their absolute
values over the examples of `score_batches` training batches.

The driver `training/recipes/xprompt.run_rounds` (built on `run.train`):
  round 0:  prompt tuning from the initial values P0 (saved as
            `initial_prompt.npy`);
  round r:  score the previous round's trained prompt; prune the given
            fraction of the surviving tokens (token rounds first), then of
            each surviving token's pieces (piece rounds); rewind the prompt
            to P0 (lottery-ticket rewinding; or to round 0's trained prompt,
            `rewind="trained"`) and retrain with the masks.
It writes `xprompt_report.json` (per round: masks, surviving tokens and
pieces, scores, metrics) and logs the survivors; `xprompt_prompt.npy` is the
final masked prompt (a plain `SoftPrompt` prompt).

Masked tokens stay in the input as zero vectors (P' = gamma P: positions and
length unchanged); their parameters get zero gradient. Trainable parameters:
P H while training; `surviving_params` counts the unmasked values.
Paper settings as far as they could be checked here (only the abstract and
introduction of the paper were readable; the rest comes from a close
translation of the paper, a secondary source): T5-Large / XL / XXL,
prompt length 20, sampled-vocabulary initialisation, Adafactor lr 0.3,
weight decay 1e-5, batch 16; 16 pieces per token (our default k); pruning
fractions searched linearly over 10% ... 90%, token-level then piece-level
rounds repeated to reach a compression ratio. Rewinding: the paper cites
weight rewinding (Renda et al.); the translation reads as resetting to the
prompt-tuning result, the issue's spec as resetting to the initial values,
so both are offered (`run_rounds(rewind="initial" | "trained")`, default
"initial"). Piece pruning per token (an equal fraction of each surviving
token's pieces) follows E2VPT's code, which builds on XPrompt.

Dimension letters: B batch, P prompt length, H embed width, k pieces per token.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import common
from ptuning_jax.methods import initializers
from ptuning_jax.methods import placements
from ptuning_jax.methods import prompt_tuning

Array = jax.Array

# Batch features that carry per-example mask copies (importance scoring).
TOKEN_MASK = "xprompt_token_mask"
PIECE_MASK = "xprompt_piece_mask"


def piece_of(d_model: int, num_pieces: int) -> np.ndarray:
  """[H] piece index of every embedding value: k contiguous pieces, of
  H / k values each when k divides H (else of floor / ceil sizes)."""
  return (np.arange(d_model) * num_pieces) // d_model


def piece_mask_values(piece_mask: Array, d_model: int) -> Array:
  """[..., P, k] piece mask -> [..., P, H]."""
  return jnp.take(piece_mask, jnp.asarray(piece_of(d_model, piece_mask.shape[-1])),
                  axis=-1)


def masked_prompt(prompt: Array, token_mask: Array, piece_mask: Array) -> Array:
  """P' = gamma (token) x zeta (piece) x P, broadcasting leading dims.

  Args:
    prompt: [P, H].
    token_mask: [..., P].
    piece_mask: [..., P, k], k <= H.
  Returns:
    [..., P, H] float32.
  """
  values = piece_mask_values(piece_mask.astype(jnp.float32), prompt.shape[-1])
  return prompt.astype(jnp.float32) * token_mask.astype(jnp.float32)[..., None] * values


class XPrompt(nn.Module):
  """A soft prompt with fixed token- and piece-level masks.

  Attributes:
    spec: the backbone's hook spec (`embed_dim` H).
    length: P.
    num_pieces: k <= H (pieces of H / k values when k divides H).
    token_mask: P entries in {0, 1}; None keeps every token.
    piece_mask: P rows of k entries in {0, 1}; None keeps every piece.
    initializer: of the prompt (the driver rewinds with `initializers.from_file`).
    placement: prompt placement (`placements.PLACEMENTS`).
  """
  spec: hooks_lib.HookSpec
  length: int = 100
  num_pieces: int = 16
  token_mask: Optional[Sequence[int]] = None
  piece_mask: Optional[Sequence[Sequence[int]]] = None
  initializer: initializers.Initializer = dataclasses.field(
      default_factory=initializers.sampled_vocab)
  placement: str = "prefix"

  def masks(self) -> tuple[np.ndarray, np.ndarray]:
    """The validated (token [P], piece [P, k]) masks as float32 arrays."""
    common.check_positive("XPrompt", length=self.length, num_pieces=self.num_pieces)
    p, k = self.length, self.num_pieces
    if self.spec is not None and self.spec.embed_dim < k:
      raise ValueError(f"XPrompt.num_pieces={k} exceeds the embed width "
                       f"{self.spec.embed_dim}.")
    token = np.ones(p, np.float32) if self.token_mask is None else np.asarray(
        self.token_mask, np.float32)
    piece = np.ones((p, k), np.float32) if self.piece_mask is None else np.asarray(
        self.piece_mask, np.float32)
    for name, value, shape in (("token_mask", token, (p,)), ("piece_mask", piece, (p, k))):
      if value.shape != shape or not np.isin(value, (0.0, 1.0)).all():
        raise ValueError(f"XPrompt.{name} must be {shape} entries in {{0, 1}}; got "
                         f"shape {value.shape}.")
    return token, piece

  @nn.compact
  def __call__(self, batch_size: int,
               context: initializers.InitContext = initializers.InitContext(),
               deterministic: bool = True,
               batch: Optional[Mapping[str, Array]] = None) -> hooks_lib.Hooks:
    del deterministic, batch_size
    token, piece = self.masks()
    prompt = initializers.prompt_param(self, "prompt", self.initializer,
                                  (self.length, self.spec.embed_dim), context)
    token, piece = jnp.asarray(token), jnp.asarray(piece)
    if batch is not None and (TOKEN_MASK in batch or PIECE_MASK in batch):
      if TOKEN_MASK not in batch or PIECE_MASK not in batch:  # importance scoring
        raise ValueError(f"XPrompt: batch features {TOKEN_MASK!r} [B, P] and "
                         f"{PIECE_MASK!r} [B, P, k] go together; got {sorted(batch)}.")
      token = token * batch[TOKEN_MASK]  # [B, P]
      piece = piece * batch[PIECE_MASK]  # [B, P, k]
    value = masked_prompt(prompt, token, piece)  # [P, H] or [B, P, H]
    combine = placements.get_placement(self.placement)

    def inputs(x, tokens, mask):
      tiled = jnp.broadcast_to(value, (x.shape[0],) + value.shape[-2:])  # [B, P, H]
      return combine(tiled, x, tokens, mask)

    return common.input_hooks(self.spec, inputs)


def fold(method: XPrompt, params: Any) -> tuple[prompt_tuning.SoftPrompt, Any]:
  """(a `SoftPrompt`, {"prompt": masked prompt}): identical outputs."""
  token, piece = method.masks()
  prompt = masked_prompt(nn.meta.unbox(params)["prompt"], token, piece)
  folded = prompt_tuning.SoftPrompt(spec=method.spec,
                              length=method.length, placement=method.placement,
                              initializer=initializers.normal())
  return folded, {"prompt": prompt}


def surviving_params(token_mask: np.ndarray, piece_mask: np.ndarray, d_model: int) -> int:
  """Unmasked prompt values: the sizes of the kept pieces of kept tokens."""
  token_mask, piece_mask = np.asarray(token_mask), np.asarray(piece_mask)
  sizes = np.bincount(piece_of(d_model, piece_mask.shape[-1]),
                      minlength=piece_mask.shape[-1])  # [k]
  return int(((token_mask[:, None] * piece_mask) * sizes[None]).sum())
