"""Building blocks shared by the prompt methods (not a method itself).

Dimension letters: B batch, P prompt length, H embed width, I / O input / output features
of a dense layer.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.methods import placements

Array = jax.Array
Axes = tuple[Optional[str], ...]


def torch_linear_init(fan_in: int) -> Callable[[Array, tuple[int, ...], Any], Array]:
  """`torch.nn.Linear`'s default init of weight and bias: U(-1/sqrt(I), 1/sqrt(I)).

  (kaiming_uniform with a=sqrt(5) gives this bound for the weight; the bias
  uses the same bound.) The reference implementations of the methods here
  (P-Tuning v2, residual prompts, DePT) are PyTorch modules with this init.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(rng, shape, dtype=jnp.float32):
    return jax.random.uniform(rng, shape, dtype, -bound, bound)
  return init


class Dense(nn.Module):
  """`y = x @ kernel + bias` in float32, torch-Linear initialised.

  Attributes:
    features: O.
    kernel_axes: logical names of kernel [I, O] (replicated method axes).
  """
  features: int
  kernel_axes: Axes = ("prompt_embed", "prompt_mlp")

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., I] -> [..., O]."""
    fan_in = x.shape[-1]
    init = torch_linear_init(fan_in)
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.kernel_axes),
                        (fan_in, self.features))
    bias = self.param("bias", nn.with_logical_partitioning(init, self.kernel_axes[1:]),
                      (self.features,))
    return jnp.dot(x.astype(jnp.float32), kernel) + bias


def joint_params(module: nn.Module, specs: Mapping[str, tuple[tuple[int, ...], Axes]],
                 joint_init: Callable[[Array], Mapping[str, Array]]) -> dict[str, Array]:
  """Parameters of `module` initialised together from one random key.

  Some initialisations produce several tensors from one computation (e.g.
  the two SVD factors of one vocabulary-sampled prompt). At init,
  `joint_init(rng)` returns `{name: value}` and each value becomes a boxed,
  replicated parameter; at apply the existing parameters are returned without
  calling it (it may need an `InitContext` that apply lacks).

  Args:
    module: the method module (inside its compact `__call__`).
    specs: name -> (shape, logical axes).
    joint_init: key -> {name: array of that shape}.
  Returns:
    name -> unboxed parameter.
  """
  if not module.is_initializing() and all(
      module.has_variable("params", name) for name in specs):
    return {name: nn.meta.unbox(module.get_variable("params", name)) for name in specs}
  values = joint_init(module.make_rng("params"))
  out = {}
  for name, (shape, axes) in specs.items():
    value = values[name]
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f"{type(module).__name__}: initial {name!r} has shape "
                       f"{tuple(value.shape)}, expected {tuple(shape)}.")
    init = nn.with_logical_partitioning(lambda rng, shape, v=value: v, tuple(axes))
    out[name] = nn.meta.unbox(module.param(name, init, shape))
  return out


def broadcast_batch(x: Array, batch_size: int) -> Array:
  """x: [...] -> [B, ...] (no copy until used)."""
  return jnp.broadcast_to(x[None], (batch_size,) + x.shape)


def check_choice(owner: str, name: str, value: Any, choices: Sequence[Any]) -> None:
  if value not in choices:
    raise ValueError(f"{owner}.{name}={value!r}; expected one of {tuple(choices)}.")


def check_positive(owner: str, **values: int) -> None:
  for name, value in values.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}.")


def input_hooks(spec: hooks_lib.HookSpec, fn: hooks_lib.InputsFn) -> hooks_lib.Hooks:
  """Hooks applying `fn` to the embedded inputs of the backbone's input stack
  (`HookSpec.input_stack`: T5's and BERT's encoder)."""
  return hooks_lib.Hooks(inputs={spec.input_stack: fn})


def prompt_hooks(spec: hooks_lib.HookSpec, prompt: Array,
                 placement: str) -> hooks_lib.Hooks:
  """Hooks placing one prompt [P, H] in every example's input, by
  `placements.PLACEMENTS[placement]` (the hook of every plain-prompt method)."""
  combine = placements.get_placement(placement)

  def inputs(x, tokens, mask):  # x: [B, T, H]
    return combine(broadcast_batch(prompt, x.shape[0]), x, tokens, mask)

  return input_hooks(spec, inputs)


def decoder_prompt_hooks(spec: hooks_lib.HookSpec, prompt: Array,
                         batch_size: int) -> hooks_lib.Hooks:
  """Hooks prepending a prompt [Pd, H] to every example's decoder input (the
  `prefix` hook of the "decoder" stack: its outputs are dropped)."""
  stack = spec.stack("decoder")
  if stack.name == spec.input_stack:
    raise ValueError(f"A decoder-side prompt needs an encoder-decoder backbone; the "
                     f"{spec.family} backbone's input stack is its decoder.")
  return hooks_lib.Hooks(prefix={stack.name: broadcast_batch(prompt, batch_size)})


def select_tasks(values: Array, index: Array, who: str) -> Array:
  """values [K, ...] -> [B, ...] rows `index` [B]; NaN rows for bad indices
  (a ValueError when `index` is concrete)."""
  num_tasks = values.shape[0]
  try:
    concrete = np.asarray(index)
  except jax.errors.TracerArrayConversionError:
    concrete = None
  if concrete is not None:
    bad = concrete[(concrete < 0) | (concrete >= num_tasks)]
    if bad.size:
      raise ValueError(f"{who}: task_index values {sorted(set(bad.tolist()))} "
                       f"outside [0, num_tasks={num_tasks}).")
  valid = (index >= 0) & (index < num_tasks)
  picked = jnp.take(values, jnp.clip(index, 0, num_tasks - 1), axis=0)
  return jnp.where(valid.reshape((-1,) + (1,) * (picked.ndim - 1)), picked, jnp.nan)
