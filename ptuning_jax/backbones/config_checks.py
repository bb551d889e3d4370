"""What every backbone family's config checks and derives, in one place.

Each family's config dataclass calls these from `__post_init__`, so a bad
field is one clear line naming the config and the field, the same way for
every family; `Numerics` gives the compute / storage dtypes.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp


def positive_ints(config: Any, names: Sequence[str]) -> None:
  for name in names:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got "
                       f"{value!r}.")


def choice(config: Any, name: str, choices: Sequence[Any]) -> None:
  value = getattr(config, name)
  if value not in choices:
    raise ValueError(f"{type(config).__name__}.{name}={value!r}; expected one of "
                     f"{tuple(choices)}.")


def rates(config: Any, names: Sequence[str]) -> None:
  """Dropout rates in [0, 1)."""
  for name in names:
    value = getattr(config, name)
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
      raise ValueError(f"{type(config).__name__}.{name} must be in [0, 1), got {value!r}.")


def float_dtypes(config: Any, names: Sequence[str] = ("dtype", "param_dtype")) -> None:
  for name in names:
    value = getattr(config, name)
    try:
      ok = isinstance(value, str) and jnp.issubdtype(jnp.dtype(value), jnp.floating)
    except TypeError:
      ok = False
    if not ok:
      raise ValueError(f"{type(config).__name__}.{name} must be a float dtype name, "
                       f"got {value!r}.")


class Numerics:
  """Mixin of configs with `dtype` (compute) and `param_dtype` (storage) names."""

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)
