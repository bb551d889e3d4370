"""SeqIO mixtures of the benchmark tasks, with their mixing rates.

MPT/DePT groups (`mpt_mix_<group>[_equal]`):

* `glue` (8), `super_glue` (5), `mrqa` (4), `others` (4): the target groups;
* `targets`: all 21 targets;
* `sources`: MPT's source tasks MNLI, QNLI, QQP, SST-2, SQuAD, ReCoRD.

`mpt_mix_<group>` samples proportionally to each task's protocol train size
(reference sizes, so no data is read to build the mixture); `_equal`
samples uniformly. `register_mixture` makes other settings: `rate` =
"proportional" | "equal", `temperature` T (rates r**(1/T)), `maximum` (cap
each size first, T5's `examples_proportional` with a limit).

Lester/T5 mixtures: `[taskless_]glue_mnli_and_dev_v200` (MNLI train with the
matched and mismatched dev sets, as prompt-tuning),
`[taskless_]super_glue_wsc_and_dev_v102_simple`, and
`[taskless_]glue_v200` / `[taskless_]super_glue_v102` proportional to T5's
example counts.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import seqio

from ptuning_jax.data.seqio import lester_tasks
from ptuning_jax.data.seqio import mpt_tasks

RATES = ("proportional", "equal")
MPT_GROUPS = {
    "glue": mpt_tasks.GLUE,
    "super_glue": mpt_tasks.SUPER_GLUE,
    "mrqa": mpt_tasks.MRQA,
    "others": mpt_tasks.OTHERS,
    "targets": mpt_tasks.TARGETS,
    "sources": mpt_tasks.SOURCES,
}


def _train_size(task_name: str) -> int:
  sizes = mpt_tasks.reference_sizes(task_name)
  if sizes is None:
    lester = lester_tasks.TASK_SPECS.get(task_name.removeprefix(
        lester_tasks.TASKLESS))
    sizes = LESTER_TRAIN_SIZES.get(lester.name) if lester else None
    sizes = None if sizes is None else {"train": sizes}
  if sizes is None or "train" not in sizes:
    raise ValueError(f"no reference train size for task {task_name!r}; use "
                     "rate='equal'.")
  return sizes["train"]


def rate_fn(rate: str = "proportional", temperature: float = 1.0,
            maximum: Optional[int] = None) -> Callable[[seqio.Task], float]:
  """A seqio mixing-rate callable.

  Args:
    rate: "proportional" (reference train size) or "equal" (1 per task).
    temperature: rates become size**(1/temperature) (T5 temperature mixing).
    maximum: cap each size at `maximum` before the temperature.

  Returns:
    task -> rate.
  """
  if rate not in RATES:
    raise ValueError(f"rate {rate!r} is not one of {RATES}.")
  if temperature <= 0:
    raise ValueError(f"temperature={temperature} must be positive.")
  if maximum is not None and maximum < 1:
    raise ValueError(f"maximum={maximum} must be positive.")

  def fn(task: seqio.Task) -> float:
    if rate == "equal":
      return 1.0
    size = _train_size(task.name)
    if maximum is not None:
      size = min(size, maximum)
    return float(size) ** (1.0 / temperature)
  return fn


def register_mixture(name: str, tasks: Sequence[str],
                     rate: str = "proportional", temperature: float = 1.0,
                     maximum: Optional[int] = None) -> str:
  """Registers (replacing any previous one) a mixture of registered tasks."""
  for t in tasks:
    mpt_tasks.ensure_registered(t)
    if t not in seqio.TaskRegistry.names():
      raise ValueError(f"mixture {name!r}: task {t!r} is not registered.")
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(
      name, list(tasks),
      default_rate=rate_fn(rate, temperature, maximum))
  return name


def mpt_mixture_name(group: str, rate: str = "proportional") -> str:
  if group not in MPT_GROUPS:
    raise ValueError(f"unknown MPT group {group!r}; known: {list(MPT_GROUPS)}")
  return f"mpt_mix_{group}" + ("" if rate == "proportional" else f"_{rate}")


# T5 `GLUE_WEIGHT_MAPPING` / `SUPER_GLUE_WEIGHT_MAPPING` example counts.
LESTER_TRAIN_SIZES = {
    "glue_cola_v200": 8_551, "glue_sst2_v200": 67_349,
    "glue_mrpc_v200": 3_668, "glue_qqp_v200": 363_849,
    "glue_stsb_v200": 5_749, "glue_mnli_v200": 392_702,
    "glue_qnli_v200": 104_743, "glue_rte_v200": 2_490,
    "super_glue_boolq_v102": 9_427, "super_glue_cb_v102": 250,
    "super_glue_copa_v102": 400, "super_glue_multirc_v102": 27_243,
    "super_glue_record_v102": 138_854, "super_glue_rte_v102": 2_490,
    "super_glue_wic_v102": 5_428, "super_glue_wsc_v102_simple_train": 259,
}


def _register_lester():
  for prefix in ("", lester_tasks.TASKLESS):
    v = lester_tasks.GLUE_VERSION
    register_mixture(f"{prefix}glue_mnli_and_dev_{v}", [
        f"{prefix}glue_mnli_{v}", f"{prefix}glue_mnli_matched_{v}",
        f"{prefix}glue_mnli_mismatched_{v}"], rate="equal")
    sv = lester_tasks.SUPER_GLUE_VERSION
    register_mixture(f"{prefix}super_glue_wsc_and_dev_{sv}_simple", [
        f"{prefix}super_glue_wsc_{sv}_simple_train",
        f"{prefix}super_glue_wsc_{sv}_simple_eval"], rate="equal")
    register_mixture(f"{prefix}glue_{v}", [
        prefix + t for t in LESTER_TRAIN_SIZES if t.startswith("glue_")])
    register_mixture(f"{prefix}super_glue_{sv}", [
        prefix + t for t in LESTER_TRAIN_SIZES if t.startswith("super_glue")])


def _register_mpt():
  for group, datasets in MPT_GROUPS.items():
    tasks = [mpt_tasks.task_name(d) for d in datasets]
    for rate in RATES:
      register_mixture(mpt_mixture_name(group, rate), tasks, rate=rate)


_register_mpt()
_register_lester()
