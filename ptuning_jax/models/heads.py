"""Trainable task heads on a frozen encoder's hidden states.

`ClassificationHead` (classification or, with one class, regression on the
first-position or masked-mean representation, optionally through the
backbone's frozen pooler) and `VerbalizerHead` (label-word scoring through the
frozen masked-LM head at the mask position). Head parameters have the
replicated axes ("prompt_embed", "head_classes") like every trainable method
parameter.

Dimension letters: B batch, T length (T' after a method's inputs hook), H
hidden size, C classes.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax.backbones import layers

Array = jax.Array
POOLINGS = ("cls", "mean")
# Initialiser scale of a fresh head (HF `initializer_range`).
INIT_STDDEV = 0.02


def pool_hidden(hidden: Array, mask: Array, pooling: str) -> Array:
  """[B, T, H], mask [B, T] -> [B, H]: first position ("cls") or masked mean.

  "cls" takes position 0, which is [CLS] / <s> unless a prompt was prefixed
  (then it is the first prompt vector, as in PEFT's prompt tuning).
  """
  if pooling == "cls":
    return hidden[:, 0]
  if pooling == "mean":
    weights = mask.astype(jnp.float32)[..., None]  # [B, T, 1]
    total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    return (total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)).astype(hidden.dtype)
  raise ValueError(f"Unknown pooling {pooling!r}; expected one of {POOLINGS}.")


class ClassificationHead(nn.Module):
  """Trainable classifier (or regressor, num_classes=1) on pooled features.

  HF's `BertForSequenceClassification` is pooling="cls", use_pooler=True.
  Parameters `dense/{kernel [H, C], bias [C]}` have the replicated axes
  ("prompt_embed", "head_classes") like every trainable method parameter.

  Attributes:
    num_classes: C; 1 for regression (logits[:, 0] is the prediction).
    pooling: "cls" (first position) or "mean" (masked mean).
    use_pooler: pass the pooled vector through the backbone's frozen tanh
      pooler first (give `pooler=pooler_fn(model, params)` when calling).
    dropout_rate: dropout before the classifier (HF: hidden dropout, 0.1).
    param_dtype: storage dtype of the head.
  """
  num_classes: int
  pooling: str = "cls"
  use_pooler: bool = False
  dropout_rate: float = 0.1
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array, mask: Array, *,
               pooler: Optional[Callable[[Array], Array]] = None,
               deterministic: bool = True) -> Array:
    """hidden [B, T, H]; mask [B, T] -> logits [B, C] float32."""
    if self.num_classes < 1:
      raise ValueError(f"ClassificationHead.num_classes must be >= 1, got "
                       f"{self.num_classes}.")
    features = pool_hidden(hidden, mask, self.pooling)  # [B, H]
    if self.use_pooler:
      if pooler is None:
        raise ValueError("ClassificationHead(use_pooler=True) needs the backbone's "
                         "pooler: call it with pooler=bert.pooler_fn(model, params).")
      features = pooler(features)
    features = nn.Dropout(rate=self.dropout_rate)(features, deterministic=deterministic)
    return layers.DenseGeneral((self.num_classes,), ("prompt_embed", "head_classes"),
                               stddev=INIT_STDDEV, use_bias=True, name="dense",
                               dtype=jnp.float32, param_dtype=self.param_dtype)(features)


def mask_positions(input_ids: Any, mask_token_id: int, offset: int = 0) -> Any:
  """Index [B] of each row's mask token, plus `offset` (e.g. a prefix's P).

  With concrete (numpy) ids, a row without exactly one mask token raises;
  traced ids are not checked (the first mask token is taken).
  """
  if isinstance(input_ids, np.ndarray):
    counts = (input_ids == mask_token_id).sum(axis=1)
    bad = np.nonzero(counts != 1)[0]
    if bad.size:
      raise ValueError(f"Rows {bad.tolist()[:10]} have {counts[bad].tolist()[:10]} "
                       f"mask tokens (id {mask_token_id}); each needs exactly one.")
    return np.argmax(input_ids == mask_token_id, axis=1) + offset
  return jnp.argmax(input_ids == mask_token_id, axis=1) + offset


class VerbalizerHead(nn.Module):
  """Label-word scoring: MLM logits of one label token per class at the mask
  position (LM-BFF / PET style). No trainable parameters.

  Attributes:
    label_token_ids: C vocabulary ids, one per class (distinct).
  """
  label_token_ids: Sequence[int]

  @nn.compact
  def __call__(self, hidden: Array, positions: Array, *,
               mlm: Callable[[Array, Array], Array],
               deterministic: bool = True) -> Array:
    """hidden [B, T', H]; positions [B] (mask token index in the encoder
    output, see `mask_positions`); mlm = `mlm_fn(model, params)`.

    Returns logits [B, C] float32.
    """
    del deterministic
    ids = list(self.label_token_ids)
    if not ids or not all(isinstance(i, (int, np.integer)) for i in ids):
      raise ValueError(f"VerbalizerHead.label_token_ids must be a non-empty list of "
                       f"ints (one vocabulary id per class), got {ids!r}.")
    if len(set(ids)) != len(ids):
      raise ValueError(f"VerbalizerHead.label_token_ids {ids} repeat an id; classes "
                       "would be indistinguishable.")
    features = jnp.take_along_axis(hidden, positions[:, None, None], axis=1)[:, 0]
    return mlm(features, jnp.asarray(ids, jnp.int32))  # [B, C]
