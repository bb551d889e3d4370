"""Prompt methods: one Flax module each, all plugged in through `hooks.Hooks`.

The interface (every method follows it; `prompt_tuning.SoftPrompt` is the
reference):

  * A method is a Linen module whose first attribute is `spec`, the
    backbone's `hooks.HookSpec` (runs build it as `method(spec=backbone.spec)`,
    so gin binds only the method's own hyper-parameters). It sizes itself
    from the spec alone (embed width, stacks, attention sites, heads, key/value
    heads, MLP widths), never from a backbone's config, so every method runs
    on every registered backbone that offers the sites it uses.
  * `method(batch_size, context=InitContext(), deterministic=True, batch=None)
    -> hooks.Hooks`: called inside the jitted loss with the trainable
    parameters; `context` (frozen embedding table, vocabulary) is given at
    init only; `deterministic=False` enables the method's dropout (rng
    "dropout"); `batch` is the whole input batch (e.g. `task_index` [B]),
    None at init and in decode/rank evaluation.
  * The method holds ALL trainable parameters (the frozen backbone's are a
    separate tree). A parameter whose initialiser reads `context` must be
    made with `initializers.prompt_param` (or `common.joint_params`). Logical
    axes of method parameters are the replicated `partitioning.PROMPT_AXES`.
  * It only fills hook sites (input prompts/offsets, per-layer key/value
    prefixes, layer inputs, activation scales); the backbone never knows
    methods.
  * Auxiliary loss terms: `self.sow("losses", name, scalar)`; the task
    model adds them to the objective and reports `aux_loss`.
  * A method with a training-time reparameterisation registers a fold,
    `fold(method, params) -> (folded_method, folded_params)`, producing a
    cheaper method with identical outputs (`methods.fold` dispatches).

Adding a method: one module here (+ `register` it below), one gin file
`gin/methods/<name>.gin` providing `METHOD`, one test file
`tests/methods/<name>_test.py`.

Dimension letters: H embed width.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.training import optimizers
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.methods import baselines
from ptuning_jax.methods import compose
from ptuning_jax.methods import dept
from ptuning_jax.methods import ia3
from ptuning_jax.methods import lopt
from ptuning_jax.methods import low_rank
from ptuning_jax.methods import mpt
from ptuning_jax.methods import multitask
from ptuning_jax.methods import prefix_tuning
from ptuning_jax.methods import residual
from ptuning_jax.methods import xprompt

Params = Any
FoldFn = Callable[[Any, Params], tuple[Any, Params]]


@dataclasses.dataclass(frozen=True)
class MethodInfo:
  """A registered method: its module class, gin file and optional fold."""
  name: str
  cls: type
  gin_file: str
  fold: Optional[FoldFn] = None


REGISTRY: dict[str, MethodInfo] = {}


def register(name: str, cls: type, gin_file: str,
             fold_fn: Optional[FoldFn] = None) -> None:
  """Adds a method to the registry (names and classes must be new)."""
  if name in REGISTRY or any(info.cls is cls for info in REGISTRY.values()):
    raise ValueError(f"Method {name!r} ({cls.__name__}) is already registered.")
  REGISTRY[name] = MethodInfo(name, cls, gin_file, fold_fn)


def get(name: str) -> MethodInfo:
  if name not in REGISTRY:
    raise ValueError(f"Unknown method {name!r}; registered: {sorted(REGISTRY)}.")
  return REGISTRY[name]


def fold(method: Any, params: Params) -> tuple[Any, Params]:
  """Folds a method's reparameterisation away; identity for methods without one.

  Args:
    method: a method module instance (unbound).
    params: its trainable parameters (boxed or not).
  Returns:
    (method, params) computing the same hooks, possibly cheaper.
  """
  for info in REGISTRY.values():
    if type(method) is info.cls:
      return info.fold(method, params) if info.fold else (method, params)
  raise ValueError(f"{type(method).__name__} is not a registered method; "
                   f"registered: {sorted(REGISTRY)}.")


def abstract_params(method: Any, context: initializers.InitContext = initializers.InitContext()
                    ) -> Params:
  """Shapes of the method's trainable parameters (nothing is computed)."""
  return jax.eval_shape(lambda rng: method.init(rng, 1, context).get("params", {}),
                        jax.random.key(0))


def count_params(method: Any,
                 context: initializers.InitContext = initializers.InitContext()) -> int:
  """Number of trainable parameters of `method` (from its parameter shapes)."""
  return optimizers.num_params(abstract_params(method, context))


register("prompt_tuning", prompt_tuning.SoftPrompt, "gin/methods/prompt_tuning.gin")
register("prefix_tuning", prefix_tuning.PrefixTuning, "gin/methods/prefix_tuning.gin",
         prefix_tuning.fold)
register("dept", dept.DePT, "gin/methods/dept.gin")
register("low_rank", low_rank.LowRankPrompt, "gin/methods/low_rank.gin",
         low_rank.fold)
register("residual", residual.ResidualPrompt, "gin/methods/residual.gin",
         residual.fold)
register("ia3", ia3.IA3, "gin/methods/ia3.gin")
register("multitask", multitask.MultiTaskPrompt, "gin/methods/multitask.gin")
register("mpt", mpt.MPT, "gin/methods/mpt.gin", mpt.fold)
register("xprompt", xprompt.XPrompt, "gin/methods/xprompt.gin", xprompt.fold)
register("lopt2", lopt.LoPT2Prompt, "gin/methods/lopt.gin", lopt.fold)
register("compose", compose.Composed, "gin/methods/compose.gin", compose.fold)
register("head_only", baselines.NoMethod, "gin/methods/head_only.gin")
register("full_finetune", baselines.FullFinetune, "gin/methods/full_finetune.gin")


# ------------------------------ README table --------------------------------


@dataclasses.dataclass(frozen=True)
class TableRow:
  """One method at a paper's setting: what trains and how many parameters."""
  method: str
  setting: str
  trains: str
  build: Callable[[Any], Any]  # HookSpec -> method module

  def count(self, spec: Any) -> int:
    return count_params(self.build(spec))


def _random(**kw):
  return dict(initializer=initializers.normal(), **kw)


PAPER_SETTINGS: tuple[TableRow, ...] = (
    TableRow("prompt_tuning", "Lester et al.: P=100", "prompt [P, H]",
             lambda c: prompt_tuning.SoftPrompt(c, **_random(length=100))),
    TableRow("prefix_tuning", "P=100, encoder prefixes", "key/value [L, P, N, D] per layer",
             lambda c: prefix_tuning.PrefixTuning(c, length=100)),
    TableRow("prefix_tuning", "P=100, encoder + decoder self/cross",
             "key/value [L, P, N, D] per layer and site",
             lambda c: prefix_tuning.PrefixTuning(
                 c, length=100, sites=c.attention_sites)),
    TableRow("prefix_tuning", "P=100, encoder, MLP M=512 (training; folds to the "
             "encoder row)", "embedding [P, H] + MLP H-M-2LND",
             lambda c: prefix_tuning.PrefixTuning(c, length=100, projection_hidden=512)),
    TableRow("dept", "m=60, r=30, s=256 (budget of P=100)", "prompt [m, H], A [s, r], B [r, H]",
             lambda c: dept.DePT(c, **_random(length=60, rank=30, max_length=256))),
    TableRow("low_rank", "DPT: P=100, b=10", "A [P, b], B [b, H]",
             lambda c: low_rank.LowRankPrompt(c, length=100, rank=10, init_mode="random")),
    TableRow("residual", "P=100, M=400, LayerNorm (training; folds to P H)",
             "prompt [P, H] + MLP H-M-H + LayerNorm",
             lambda c: residual.ResidualPrompt(c, **_random(length=100, bottleneck=400))),
    TableRow("ia3", "keys, values (all attentions), MLP hidden",
             "vectors [L, N D] / [L, F] per site", lambda c: ia3.IA3(c)),
    TableRow("multitask", "add, P=100, K=6 tasks", "shared [P, H] + K task [P, H]",
             lambda c: multitask.MultiTaskPrompt(
                 c, num_tasks=6, length=100, shared_initializer=initializers.normal(),
                 task_initializer=initializers.normal())),
    TableRow("multitask", "concat, Ps=50, Pt=50, K=6 tasks", "shared [Ps, H] + K task [Pt, H]",
             lambda c: multitask.MultiTaskPrompt(
                 c, num_tasks=6, length=50, task_length=50, combine="concat",
                 shared_initializer=initializers.normal(), task_initializer=initializers.normal())),
)


# MPT and XPrompt (registered after the first table was fixed): the README
# table is `parameter_table(config, PAPER_SETTINGS + EXTRA_SETTINGS)`.
EXTRA_SETTINGS: tuple[TableRow, ...] = (
    TableRow("mpt", "source training: P=100, rank one, K=6 source tasks",
             "P* [P, H] + K (u [P], v [H])",
             lambda c: mpt.MPT(c, num_tasks=6, length=100)),
    TableRow("mpt", "target adaptation: P=100, rank one (the paper's 0.035%)",
             "P* [P, H] + u [P] + v [H]", lambda c: mpt.MPT(c, length=100)),
    TableRow("xprompt", "P=100, k=16 pieces (training; pruning masks part)",
             "prompt [P, H] under fixed token/piece masks",
             lambda c: xprompt.XPrompt(c, length=100, num_pieces=16,
                                       initializer=initializers.normal())),
    TableRow("lopt2", "LoPT-2: P=20, r=4 (any P)", "U [H, r], V [r, H] (X0 fixed)",
             lambda c: lopt.LoPT2Prompt(c, length=20, rank=4, init_mode="random")),
)


def parameter_table(spec: Any, rows: tuple[TableRow, ...] = PAPER_SETTINGS) -> str:
  """Markdown table: method, setting, what trains, parameter count, gin file.

  Counts are computed from the methods' parameter shapes for the backbone's
  hook spec `spec` (e.g. `t5.hook_spec(t5.get_config("base"))`), not typed
  by hand.
  """
  lines = ["| method | setting | what trains | parameters | gin file |",
           "|---|---|---|---:|---|"]
  for row in rows:
    lines.append(f"| {row.method} | {row.setting} | {row.trains} | "
                 f"{row.count(spec):,} | `{get(row.method).gin_file}` |")
  return "\n".join(lines)


__all__ = ["MethodInfo", "REGISTRY", "register", "get", "fold", "count_params",
           "abstract_params", "parameter_table", "PAPER_SETTINGS", "EXTRA_SETTINGS",
           "TableRow", "baselines", "compose", "dept", "ia3", "lopt", "low_rank", "mpt", "multitask", "prefix_tuning",
           "residual", "xprompt"]
