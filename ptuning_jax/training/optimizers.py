"""Optimizers and learning-rate schedules (optax). Gradient accumulation over
microbatches is part of the train step (`trainer.compute_gradients`).

Everything here acts on the *trainable* parameter tree only (prompts,
low-rank factors, heads); the frozen backbone never reaches an optimizer.

Dimension letters: B batch, M microbatches, P prompt length, H d_model.

Adafactor defaults follow Lester et al. (2021) / T5X prompt tuning: constant
learning rate 0.3, second-moment decay exponent 0.8, weight decay 1e-5, no
parameter scaling, update clipping at RMS 1.0, and no factoring of the
second moment for prompt tensors `[P, H]` (prompt-tuning's factor rules mark
the `prompt` axis `FactorDim.NONE`).

Parameter groups (`ParamGroup`) select leaves by a regular expression that
`re.search`es the '/'-joined path of a leaf in the trainable tree, e.g.
`encoder/prompt/prompt`; each group gets its own learning rate and weight
decay (DePT: prompt 3e-1, low-rank factors 1e-4).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any
Schedule = Callable[[Any], Any]

DEFAULT_GROUP = "default"
SCHEDULES = ("constant", "linear", "cosine", "rsqrt")
OPTIMIZERS = ("adafactor", "adamw")


# ---------------------------------------------------------------------------
# Paths.
# ---------------------------------------------------------------------------


def path_str(path: tuple, separator: str = "/") -> str:
  """`jax.tree_util` key path -> 'a/b/c' (dict keys, attributes, indices)."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator=separator)


def leaf_paths(tree: Any) -> list[str]:
  """'/'-joined paths of all leaves of `tree`, in `jax.tree.leaves` order."""
  return [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


# ---------------------------------------------------------------------------
# Optimizers.
# ---------------------------------------------------------------------------


def _in_float32(
    inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs `inner` on float32 copies of grads/params, like T5X's Adafactor.

  The optimizer state is float32 whatever the parameter dtype (bf16 second
  moments lose too much); updates are cast back to each gradient's dtype.
  """

  def to_f32(x):
    if jnp.issubdtype(x.dtype, jnp.floating):
      return x.astype(jnp.float32)
    return x

  def init_fn(params):
    return inner.init(jax.tree.map(to_f32, params))

  def update_fn(updates, state, params=None):
    params32 = None if params is None else jax.tree.map(to_f32, params)
    new_updates, state = inner.update(jax.tree.map(to_f32, updates), state,
                                      params32)
    new_updates = jax.tree.map(lambda u, g: u.astype(g.dtype), new_updates,
                               updates)
    return new_updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def adafactor(learning_rate: float | Schedule = 0.3,
              decay_rate: float = 0.8,
              weight_decay_rate: Optional[float] = 1e-5,
              multiply_by_parameter_scale: bool = False,
              clipping_threshold: Optional[float] = 1.0,
              min_dim_size_to_factor: int = 128,
              epsilon1: float = 1e-30,
              factored: bool = False,
              beta1: Optional[float] = None,
              step_offset: int = 0) -> optax.GradientTransformation:
  """Adafactor with the T5X prompt-tuning semantics, built on `optax.adafactor`.

  Per leaf, at step t = 0, 1, ... (T5X `Adafactor.apply_param_gradient`):

    beta2_t = 1 - (t + 1 - step_offset) ** -decay_rate
    v       = beta2_t * v + (1 - beta2_t) * (g**2 + epsilon1)   # [P, H]
    y       = g / sqrt(v)
    y       = y / max(1, rms(y) / clipping_threshold)
    param   = (1 - weight_decay_rate) * param - lr_t * y

  Mapping onto `optax.adafactor`: T5X's `decay_rate` is the *exponent* of
  that beta2 schedule, exactly optax's `decay_rate` (both `_decay_rate_pow`),
  and `step_offset` is optax's `decay_offset`. T5X's weight decay is
  decoupled and NOT multiplied by the learning rate (it is unless
  `weight_decay_rate_lr_exponent` is set, which prompt tuning does not):
  `new = (1 - wd) * param - lr * y`. `optax.adafactor` adds
  `weight_decay_rate * param` *after* `scale_by_learning_rate`, so passing
  the rate unchanged gives the same update. `beta1` is T5X's momentum on
  `lr * y` (optax `momentum`, an undebiased EMA). Statistics are float32
  for any parameter dtype, as in T5X.

  Factoring: with `factored=False` (default) every leaf keeps a full second
  moment `v` of its own shape, matching prompt-tuning's `prompt: NONE` factor
  rule. With `factored=True`, a leaf is factored along its two largest
  dimensions when both are >= `min_dim_size_to_factor` (T5X's heuristic).
  Note: recent T5X falls back to that heuristic for every rank <= 2 leaf even
  when a rule says NONE, so it factors a [P, H] prompt once P >= 128; for the
  paper's P = 100 both choices give the same, unfactored, update.

  Args:
    learning_rate: absolute step size (a float or an optax schedule).
    decay_rate: exponent of the second-moment decay schedule.
    weight_decay_rate: decoupled decay per step; None or 0 disables it.
    multiply_by_parameter_scale: scale the step by max(rms(param), 1e-3).
    clipping_threshold: update RMS clipping threshold; None disables it.
    min_dim_size_to_factor: smallest dimension that may be factored.
    epsilon1: added to squared gradients.
    factored: allow factored second moments (see above).
    beta1: optional momentum.
    step_offset: step at which the second-moment schedule restarts.
  """
  if clipping_threshold is not None and clipping_threshold <= 0:
    raise ValueError(f"adafactor: clipping_threshold={clipping_threshold} must "
                     "be > 0 (or None to disable clipping).")
  if decay_rate <= 0:
    raise ValueError(f"adafactor: decay_rate={decay_rate} must be > 0.")
  if weight_decay_rate is not None and weight_decay_rate < 0:
    raise ValueError(f"adafactor: weight_decay_rate={weight_decay_rate} < 0.")
  inner = optax.adafactor(
      learning_rate=learning_rate,
      min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate,
      decay_offset=step_offset,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold,
      momentum=beta1,
      weight_decay_rate=weight_decay_rate or None,
      eps=epsilon1,
      factored=factored)
  return _in_float32(inner)


def adamw(learning_rate: float | Schedule, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8,
          weight_decay: float = 0.0) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay, multiplied by the learning rate)."""
  if not 0 <= b1 < 1 or not 0 <= b2 < 1:
    raise ValueError(f"adamw: b1={b1} and b2={b2} must lie in [0, 1).")
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                     weight_decay=weight_decay)


# ---------------------------------------------------------------------------
# Schedules.
# ---------------------------------------------------------------------------


def make_schedule(kind: str = "constant", base_lr: float = 0.3,
                  warmup_steps: int = 0, total_steps: Optional[int] = None,
                  end_lr_factor: float = 0.0) -> Schedule:
  """Learning rate as a function of the step, with linear warmup (optax
  schedules joined at `warmup_steps`).

  lr(t) = base_lr * min(1, t / warmup_steps) * decay(t), with decay:
    constant: 1.
    linear:   from 1 at `warmup_steps` to `end_lr_factor` at `total_steps`.
    cosine:   half cosine over the same span, to `end_lr_factor`.
    rsqrt:    sqrt(w / max(t, w)), w = max(warmup_steps, 1), so the peak at
              the end of warmup is `base_lr` (T5X's rsqrt_decay, rescaled).
  The warmup starts at 0 for t = 0 (T5X / optax convention).
  """
  if kind not in SCHEDULES:
    raise ValueError(f"Unknown schedule kind {kind!r}; expected one of "
                     f"{SCHEDULES}.")
  if base_lr < 0:
    raise ValueError(f"base_lr={base_lr} must be >= 0.")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps={warmup_steps} must be >= 0.")
  if kind in ("linear", "cosine"):
    if total_steps is None or total_steps <= warmup_steps:
      raise ValueError(f"Schedule {kind!r} needs total_steps > warmup_steps; "
                       f"got total_steps={total_steps}, "
                       f"warmup_steps={warmup_steps}.")
  if not 0 <= end_lr_factor <= 1:
    raise ValueError(f"end_lr_factor={end_lr_factor} must lie in [0, 1].")

  if kind == "rsqrt":  # optax has no rsqrt decay: its one hand-written part.
    w = float(max(warmup_steps, 1))
    decay = lambda count: base_lr * jnp.sqrt(  # noqa: E731
        w / jnp.maximum(jnp.asarray(count, jnp.float32) + warmup_steps, w))
  elif kind == "constant":
    decay = optax.constant_schedule(base_lr)
  elif kind == "linear":
    decay = optax.linear_schedule(base_lr, base_lr * end_lr_factor,
                                  total_steps - warmup_steps)
  else:
    decay = optax.cosine_decay_schedule(base_lr, total_steps - warmup_steps,
                                        alpha=end_lr_factor)
  if not warmup_steps:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base_lr, warmup_steps), decay], [warmup_steps])


# ---------------------------------------------------------------------------
# Configuration and parameter groups.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParamGroup:
  """Trainable leaves whose '/'-joined path `re.search`es `regex`.

  Attributes:
    name: group label (unique, not 'default').
    regex: pattern searched in each leaf path, e.g. r'(^|/)prompt(/|$)'.
    learning_rate: this group's base learning rate.
    weight_decay: this group's weight decay; None uses the config's.
    schedule: schedule kind; None uses the config's.
    warmup_steps: None uses the config's.
  """
  name: str
  regex: str
  learning_rate: float
  weight_decay: Optional[float] = None
  schedule: Optional[str] = None
  warmup_steps: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Plain description of the optimizer; `build_optimizer` makes it.

  `weight_decay=None` takes the optimizer's default: 1e-5 for adafactor
  (T5X prompt tuning), 0.0 for adamw. `clip_grad_norm` clips the global
  gradient norm over *all* trainables before any group's update.
  """
  name: str = "adafactor"
  learning_rate: float = 0.3
  schedule: str = "constant"
  warmup_steps: int = 0
  total_steps: Optional[int] = None
  end_lr_factor: float = 0.0
  weight_decay: Optional[float] = None
  clip_grad_norm: Optional[float] = None
  param_groups: tuple[ParamGroup, ...] = ()
  # Adafactor.
  decay_rate: float = 0.8
  clipping_threshold: Optional[float] = 1.0
  multiply_by_parameter_scale: bool = False
  factored: bool = False
  min_dim_size_to_factor: int = 128
  epsilon1: float = 1e-30
  beta1: Optional[float] = None
  # AdamW.
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def __post_init__(self):
    # gin passes lists; keep the dataclass hashable.
    object.__setattr__(self, "param_groups", tuple(self.param_groups))
    if self.name not in OPTIMIZERS:
      raise ValueError(f"OptimizerConfig.name={self.name!r}; expected one of "
                       f"{OPTIMIZERS}.")
    if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
      raise ValueError(f"OptimizerConfig.clip_grad_norm={self.clip_grad_norm} "
                       "must be > 0 or None.")
    names = [g.name for g in self.param_groups]
    for group in self.param_groups:
      if not isinstance(group, ParamGroup):
        raise TypeError(f"param_groups holds {group!r}, not a ParamGroup.")
      if group.name == DEFAULT_GROUP or names.count(group.name) > 1:
        raise ValueError(f"ParamGroup name {group.name!r} is reserved or "
                         f"repeated (groups: {names}).")
      try:
        re.compile(group.regex)
      except re.error as e:
        raise ValueError(f"ParamGroup {group.name!r}: bad regex "
                         f"{group.regex!r}: {e}") from e


def group_labels(params: Params,
                 param_groups: tuple[ParamGroup, ...]) -> Params:
  """Tree like `params` with each leaf's group name ('default' if unmatched).

  Raises:
    ValueError: a group's regex matches no leaf, or a leaf matches two groups.
  """
  paths_leaves = jax.tree_util.tree_leaves_with_path(params)
  paths = [path_str(p) for p, _ in paths_leaves]
  labels = []
  for path in paths:
    hits = [g.name for g in param_groups if re.search(g.regex, path)]
    if len(hits) > 1:
      raise ValueError(f"Trainable parameter {path!r} matches several param "
                       f"groups: {hits}.")
    labels.append(hits[0] if hits else DEFAULT_GROUP)
  for group in param_groups:
    if group.name not in labels:
      raise ValueError(f"ParamGroup {group.name!r}: regex {group.regex!r} "
                       f"matches no trainable parameter; paths are {paths}.")
  treedef = jax.tree_util.tree_structure(params)
  return jax.tree_util.tree_unflatten(treedef, labels)


def build_schedules(config: OptimizerConfig) -> dict[str, Schedule]:
  """Group name -> learning-rate schedule ('default' for unmatched leaves)."""
  schedules = {DEFAULT_GROUP: make_schedule(
      config.schedule, config.learning_rate, config.warmup_steps,
      config.total_steps, config.end_lr_factor)}
  for g in config.param_groups:
    schedules[g.name] = make_schedule(
        g.schedule or config.schedule, g.learning_rate,
        config.warmup_steps if g.warmup_steps is None else g.warmup_steps,
        config.total_steps, config.end_lr_factor)
  return schedules


def _make_one(config: OptimizerConfig, schedule: Schedule,
              weight_decay: Optional[float]) -> optax.GradientTransformation:
  if config.name == "adafactor":
    return adafactor(
        learning_rate=schedule, decay_rate=config.decay_rate,
        weight_decay_rate=1e-5 if weight_decay is None else weight_decay,
        multiply_by_parameter_scale=config.multiply_by_parameter_scale,
        clipping_threshold=config.clipping_threshold,
        min_dim_size_to_factor=config.min_dim_size_to_factor,
        epsilon1=config.epsilon1, factored=config.factored, beta1=config.beta1)
  return adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
               weight_decay=0.0 if weight_decay is None else weight_decay)


def build_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """The optax transformation for the trainable tree described by `config`.

  Without param groups this is one optimizer; with groups it is an
  `optax.multi_transform` keyed by `group_labels` (computed from the tree at
  `init`/`update`, so a bad regex fails at `init`).
  """
  schedules = build_schedules(config)
  if not config.param_groups:
    tx = _make_one(config, schedules[DEFAULT_GROUP], config.weight_decay)
  else:
    transforms = {DEFAULT_GROUP: _make_one(config, schedules[DEFAULT_GROUP],
                                           config.weight_decay)}
    for g in config.param_groups:
      wd = config.weight_decay if g.weight_decay is None else g.weight_decay
      transforms[g.name] = _make_one(config, schedules[g.name], wd)
    groups = config.param_groups
    tx = optax.multi_transform(transforms,
                               lambda tree: group_labels(tree, groups))
  if config.clip_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), tx)
  return tx


# ---------------------------------------------------------------------------
# Sizes.
# ---------------------------------------------------------------------------


def num_params(tree: Any) -> int:
  """Number of scalars in the array leaves of `tree`."""
  return int(sum(np.prod(np.shape(x), dtype=np.int64)
                 for x in jax.tree.leaves(tree)))


def optimizer_state_bytes(opt_state: Any) -> int:
  """Bytes held by the array leaves of an optimizer state (or any tree)."""
  total = 0
  for x in jax.tree.leaves(opt_state):
    dtype = getattr(x, "dtype", None)
    if dtype is None:
      dtype = np.asarray(x).dtype
    size = int(np.prod(np.shape(x), dtype=np.int64))
    total += size * np.dtype(dtype).itemsize
  return total
