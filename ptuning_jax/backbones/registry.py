"""The backbone registry: Hugging Face `model_type` -> family.

A family bundles everything the rest of the package needs to know about one
architecture, so the core never names a backbone: how to build its module
from a config, the `hooks.HookSpec` it offers methods, the task models it can
serve, how to read its config and tensors from a Hugging Face checkpoint
directory and how to write them back. Families register in
`ptuning_jax/backbones/__init__.py`; adding a backbone adds one `register`
call there (see the README, "Adding a backbone").
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

from ptuning_jax import hooks as hooks_lib
from ptuning_jax.backbones.hf import tensors as hf_tensors

# What a family's module computes, i.e. which task models it serves.
KINDS = ("seq2seq", "encoder", "causal")
CONFIG_NAME = "config.json"


@dataclasses.dataclass(frozen=True)
class Family:
  """One backbone family.

  Attributes:
    name: "t5", "bert", ...
    kind: one of KINDS: "seq2seq" (encoder-decoder LM: `module(enc, dec)` ->
      logits), "encoder" (`module.encode(ids, mask, types)` -> hidden
      states), "causal" (decoder-only LM).
    model_types: Hugging Face `model_type` values it loads.
    config_type: its config dataclass.
    module: config -> the Flax module.
    hook_spec: config -> `hooks.HookSpec`.
    init_args: config -> positional dummy inputs of `module.init`.
    embedding: params -> the [V, H] token embedding table.
    load_config: checkpoint dir -> config.
    load_params: (checkpoint dir, config, mesh, rules) -> params placed on
      their shardings (mesh None: the default device).
    save: (params, config, out dir) -> None, the Hugging Face layout.
    override: (config, **fields) -> config with run-level overrides applied
      (`dtype`, `param_dtype`, `dropout_rate`, `remat_policy`); a field the
      family cannot honour raises.
    num_params: config -> parameter count.
  """
  name: str
  kind: str
  model_types: tuple[str, ...]
  config_type: type
  module: Callable[[Any], Any]
  hook_spec: Callable[[Any], hooks_lib.HookSpec]
  init_args: Callable[[Any], tuple]
  embedding: Callable[[Any], Any]
  load_config: Callable[[str], Any]
  load_params: Callable[..., Any]
  save: Optional[Callable[[Any, Any, str], None]]
  override: Callable[..., Any]
  num_params: Callable[[Any], int]

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Family {self.name!r}: kind={self.kind!r}; expected one of {KINDS}.")


REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
  """Adds a family (its name and model types must be new)."""
  taken = {t: f.name for f in REGISTRY.values() for t in f.model_types}
  clash = [t for t in family.model_types if t in taken]
  if family.name in REGISTRY or clash:
    raise ValueError(f"Backbone family {family.name!r} is already registered or its "
                     f"model types {clash} belong to {sorted(set(taken[t] for t in clash))}.")
  REGISTRY[family.name] = family
  return family


def get(name: str) -> Family:
  if name not in REGISTRY:
    raise ValueError(f"Unknown backbone family {name!r}; registered: {sorted(REGISTRY)}.")
  return REGISTRY[name]


def for_model_type(model_type: Any, where: str = "config.json") -> Family:
  for family in REGISTRY.values():
    if model_type in family.model_types:
      return family
  supported = sorted(t for f in REGISTRY.values() for t in f.model_types)
  raise ValueError(f"{where}: model_type={model_type!r} is not supported; expected one "
                   f"of {supported}.")


def for_config(config: Any) -> Family:
  """The family whose config dataclass `config` is."""
  for family in REGISTRY.values():
    if isinstance(config, family.config_type):
      return family
  raise ValueError(f"{type(config).__name__} is not the config of a registered "
                   f"backbone family; registered: {sorted(REGISTRY)}.")


def for_checkpoint(ckpt_dir: str | os.PathLike) -> Family:
  """The family of a Hugging Face checkpoint directory, by its `model_type`."""
  path = os.path.join(os.fspath(ckpt_dir), CONFIG_NAME)
  if not os.path.isdir(os.fspath(ckpt_dir)):
    raise FileNotFoundError(f"Checkpoint directory {ckpt_dir} does not exist.")
  return for_model_type(hf_tensors.read_json(path).get("model_type"), path)


def load_config(ckpt_dir: str | os.PathLike) -> Any:
  """The config of any registered family's checkpoint directory."""
  return for_checkpoint(ckpt_dir).load_config(os.fspath(ckpt_dir))
