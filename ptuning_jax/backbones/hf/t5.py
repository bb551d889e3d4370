"""Import and export Hugging Face T5 checkpoints (safetensors) for `t5.T5`.

A checkpoint directory holds `config.json` and either `model.safetensors` or
shards listed in `model.safetensors.index.json`. Every HF tensor maps to
exactly one parameter (HF `Linear` weights are [out, in]; our kernels are
[in, out], attention kernels split into heads):

  shared.weight [V, H]                              -> token_embedder/embedding
  {enc,dec}oder.block.0.layer.0.SelfAttention
      .relative_attention_bias.weight [R, N]        -> {stack}/relpos_bias/rel_embedding
  ...SelfAttention|EncDecAttention.{q,k,v}.weight [N*D, H] -> .../{query,key,value}/kernel [H, N, D]
  ....o.weight [H, N*D]                             -> .../out/kernel [N, D, H]
  ...DenseReluDense.{wi,wi_0,wi_1}.weight [F, H]    -> .../mlp/{wi,wi_0,wi_1}/kernel [H, F]
  ...DenseReluDense.wo.weight [H, F]                -> .../mlp/wo/kernel [F, H]
  ...layer_norm.weight, {enc,dec}oder.final_layer_norm.weight [H] -> .../scale
  lm_head.weight [V, H]                             -> logits_dense/kernel [H, V]

Tied aliases. Checkpoints written by transformers may also store
`encoder.embed_tokens.weight` / `decoder.embed_tokens.weight` (copies of
`shared.weight`), and tied original-T5 checkpoints may store `lm_head.weight`
equal to `shared.weight`. Aliases are accepted only when bit-identical to the
embedding (the first present of shared / encoder / decoder embed_tokens);
any difference raises `CheckpointMismatchError`. HF's unused
`decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight`
(present in some old checkpoints; HF ignores it on load) is ignored too.

Tying and scaling (transformers 5.25, which this loader follows exactly).
Two independent questions:
  * Is the output head the embedding? transformers 5 forces
    `config.tie_word_embeddings = True` for T5 and mT5 alike, so `lm_head`
    is tied to `shared` on load unless the checkpoint stores an
    `lm_head.weight` that differs from it (then untied, with a warning). A
    model built from a config is tied, and `save_pretrained` then writes no
    `lm_head.weight` and `tie_word_embeddings: true`. Here: tied iff
    `lm_head.weight` is absent or equal to the embedding. A checkpoint
    declaring `tie_word_embeddings: false` without `lm_head.weight` is refused
    (transformers 4 initialises that head randomly, 5 ties it).
  * Are decoder outputs scaled by d_model**-0.5? `model_type: "t5"`: the
    `scale_decoder_outputs` key if present, else `tie_word_embeddings` (a
    missing key counts as true); `T5Config` writes `scale_decoder_outputs`
    on save. `model_type: "mt5"`: never (`MT5ForConditionalGeneration` has
    no scaling; a `scale_decoder_outputs` key is ignored, with a warning).
So the layouts in use map to `T5Config` as follows (tie, scaled):
  original T5 (t5, tie absent/true, no or equal lm_head)     True,  True
  T5 1.1 on the hub (t5, tie false, lm_head)                 False, False
  T5 1.1 built from a config by transformers 5 (t5, tie true,
    scale false, no lm_head)                                 True,  False
  T5 1.1 hub checkpoint re-saved by transformers 5 (t5, tie
    true, scale false, lm_head)                              False, False
  mT5 on the hub (mt5, tie false, lm_head)                   False, False
  mT5 built from a config by transformers 5 (mt5, tie true,
    no lm_head, no scale key)                                True,  False
  mT5 hub checkpoint re-saved by transformers 5 (mt5, tie
    true, lm_head)                                           False, False
Export writes `model_type` back ("mt5" stays "mt5"), `lm_head.weight` only
for an untied head, and `tie_word_embeddings` (+ `scale_decoder_outputs`
for "t5"), so every layout round-trips to the same `T5Config` and tensors.

Loading streams tensor by tensor with `safetensors.safe_open` (numpy; bf16
via ml_dtypes) and places each directly into its target sharding, so the host
never holds the whole model.

Dimension letters: V vocabulary, H d_model, N heads, D head dim, F MLP dim,
R relative-position buckets.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax.backbones.hf import tensors as hf_tensors
from ptuning_jax.training import partitioning
from ptuning_jax.backbones import t5
from ptuning_jax.backbones.hf.tensors import CheckpointMismatchError
from ptuning_jax.backbones.hf.tensors import TensorMap

CONFIG_NAME = "config.json"
EMBED_ALIASES = ("shared.weight", "encoder.embed_tokens.weight",
                 "decoder.embed_tokens.weight")
IGNORED_TENSORS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
FEED_FORWARD_PROJ = {"gated-gelu": "gated-gelu", "relu": "relu"}
DENSE_ACT_FN = {"gated-gelu": "gelu_new", "relu": "relu"}

Params = Any


def tensor_maps(config: t5.T5Config) -> list[TensorMap]:
  """The complete parameter <-> HF tensor correspondence for `config`."""
  maps = [TensorMap(("token_embedder", "embedding"), "shared.weight", "copy")]
  if not config.tie_word_embeddings:
    maps.append(TensorMap(("logits_dense", "kernel"), "lm_head.weight", "linear"))
  for stack, num_layers in (("encoder", config.num_encoder_layers),
                            ("decoder", config.num_decoder_layers)):
    maps.append(TensorMap(
        (stack, "relpos_bias", "rel_embedding"),
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "copy"))
    norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
    maps.append(TensorMap((stack, norm, "scale"), f"{stack}.final_layer_norm.weight",
                          "copy"))
    for i in range(num_layers):
      maps += _layer_maps(config, stack, i)
  return maps


def _layer_maps(config: t5.T5Config, stack: str, i: int) -> list[TensorMap]:
  hf = f"{stack}.block.{i}.layer"
  ours = (stack, f"layers_{i}")
  if stack == "encoder":
    blocks = [("pre_attention_layer_norm", "attention", f"{hf}.0", "SelfAttention")]
    mlp_hf = f"{hf}.1"
  else:
    blocks = [("pre_self_attention_layer_norm", "self_attention", f"{hf}.0",
               "SelfAttention"),
              ("pre_cross_attention_layer_norm", "encoder_decoder_attention",
               f"{hf}.1", "EncDecAttention")]
    mlp_hf = f"{hf}.2"
  maps = []
  for norm, attention, prefix, hf_attention in blocks:
    maps.append(TensorMap(ours + (norm, "scale"), f"{prefix}.layer_norm.weight", "copy"))
    for proj, hf_proj in (("query", "q"), ("key", "k"), ("value", "v")):
      maps.append(TensorMap(ours + (attention, proj, "kernel"),
                            f"{prefix}.{hf_attention}.{hf_proj}.weight", "linear_heads"))
    maps.append(TensorMap(ours + (attention, "out", "kernel"),
                          f"{prefix}.{hf_attention}.o.weight", "linear_out_heads"))
  maps.append(TensorMap(ours + ("pre_mlp_layer_norm", "scale"),
                        f"{mlp_hf}.layer_norm.weight", "copy"))
  wis = ("wi_0", "wi_1") if config.feed_forward == "gated-gelu" else ("wi",)
  for name in wis + ("wo",):
    maps.append(TensorMap(ours + ("mlp", name, "kernel"),
                          f"{mlp_hf}.DenseReluDense.{name}.weight", "linear"))
  return maps


# --------------------------------- config -----------------------------------


def load_config(ckpt_dir: str) -> t5.T5Config:
  """Maps an HF T5 / mT5 checkpoint (`config.json`, and the `lm_head.weight`
  tensor if any) onto `T5Config`, as transformers 5 reads it (module docstring).

  Raises:
    ValueError: a value this implementation does not support (model type,
      activation, a decoder-only config), naming the file and key.
    FileNotFoundError: no config.json or no weights.
  """
  path = os.path.join(ckpt_dir, CONFIG_NAME)
  hf = hf_tensors.read_json(path)
  model_type, proj = _check_supported(hf, path)
  num_layers = hf_tensors.int_field(hf, "num_layers", path)
  decoder_layers = hf.get("num_decoder_layers")
  pad = hf_tensors.int_field(hf, "pad_token_id", path, 0)
  scale = _scales_decoder_outputs(hf, model_type, path)
  tie = _head_is_tied(ckpt_dir, hf)
  return t5.T5Config(
      vocab_size=hf_tensors.int_field(hf, "vocab_size", path),
      d_model=hf_tensors.int_field(hf, "d_model", path),
      num_heads=hf_tensors.int_field(hf, "num_heads", path),
      d_kv=hf_tensors.int_field(hf, "d_kv", path),
      d_ff=hf_tensors.int_field(hf, "d_ff", path),
      num_encoder_layers=num_layers,
      num_decoder_layers=(num_layers if decoder_layers is None
                          else hf_tensors.int_field(hf, "num_decoder_layers", path)),
      relative_attention_num_buckets=hf_tensors.int_field(
          hf, "relative_attention_num_buckets", path, 32),
      relative_attention_max_distance=hf_tensors.int_field(
          hf, "relative_attention_max_distance", path, 128),
      feed_forward=FEED_FORWARD_PROJ[proj],
      tie_word_embeddings=tie,
      # None (the default for model_type and tie) keeps configs comparable.
      scale_decoder_outputs=None if scale == (tie and model_type == "t5") else scale,
      model_type=model_type,
      dropout_rate=float(hf.get("dropout_rate", 0.1)),
      layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
      pad_token_id=pad,
      eos_token_id=hf_tensors.int_field(hf, "eos_token_id", path, 1),
      decoder_start_token_id=hf_tensors.int_field(hf, "decoder_start_token_id", path, pad),
  )


def _check_supported(hf: Mapping[str, Any], path: str) -> tuple[str, str]:
  """Validates the keys we cannot express; returns (model_type, feed_forward_proj)."""
  model_type = hf.get("model_type")
  if model_type not in t5.MODEL_TYPES:
    raise ValueError(f"{path}: model_type={model_type!r} is not supported "
                     "(expected 't5' or 'mt5').")
  for key, expected in (("is_decoder", False), ("is_encoder_decoder", True)):
    if key in hf and hf[key] != expected:
      raise ValueError(f"{path}: {key}={hf[key]!r} is not supported (need {expected}).")
  proj = hf.get("feed_forward_proj", "gated-gelu" if model_type == "mt5" else "relu")
  if proj not in FEED_FORWARD_PROJ:
    raise ValueError(f"{path}: feed_forward_proj={proj!r} is not supported; "
                     f"expected one of {sorted(FEED_FORWARD_PROJ)}.")
  act = hf.get("dense_act_fn")
  if act is not None and act != DENSE_ACT_FN[proj] and not (
      proj == "gated-gelu" and act == "gelu"):  # HF maps gated-gelu to gelu_new
    raise ValueError(f"{path}: dense_act_fn={act!r} contradicts feed_forward_proj="
                     f"{proj!r} (HF uses {DENSE_ACT_FN[proj]!r}).")
  return model_type, proj


def _scales_decoder_outputs(hf: Mapping[str, Any], model_type: str, path: str) -> bool:
  """transformers 5: t5 `scale_decoder_outputs`, else `tie_word_embeddings is
  not False`; mt5 never."""
  tie = hf.get("tie_word_embeddings")
  scale = hf.get("scale_decoder_outputs")
  for key, value in (("tie_word_embeddings", tie), ("scale_decoder_outputs", scale)):
    if value is not None and not isinstance(value, bool):
      raise ValueError(f"{path}: {key}={value!r} must be a bool.")
  if model_type == "mt5":
    if scale:
      logging.warning("%s: scale_decoder_outputs=true is ignored for model_type "
                      "'mt5', as transformers' MT5ForConditionalGeneration does.", path)
    return False
  return tie is not False if scale is None else scale


def _declares_tied_head(hf: Mapping[str, Any]) -> bool:
  return hf.get("tie_word_embeddings") is not False


def _head_is_tied(ckpt_dir: str, hf: Mapping[str, Any]) -> bool:
  """No `lm_head.weight` and tying declared, or one equal to the embedding."""
  with contextlib.ExitStack() as stack:
    source = hf_tensors.TensorSource(ckpt_dir, stack)
    names = source.names()
    if "lm_head.weight" not in names:
      return _declares_tied_head(hf)
    embedding = next((n for n in EMBED_ALIASES if n in names), None)
    return embedding is not None and source.equal("lm_head.weight", embedding)


def hf_config_dict(config: t5.T5Config) -> dict:
  """`config.json` contents for `config`, read back by transformers 5 (and by
  `load_config`) as the same model. transformers 4 reads T5 scaling from
  `tie_word_embeddings` alone, so it agrees only for tied-and-scaled and
  untied-and-unscaled models (original T5, T5 1.1, hub mT5)."""
  mt5 = config.model_type == "mt5"
  out = {
      "architectures": ["MT5ForConditionalGeneration" if mt5 else "T5ForConditionalGeneration"],
      "model_type": config.model_type,
      "vocab_size": config.vocab_size,
      "d_model": config.d_model,
      "num_heads": config.num_heads,
      "d_kv": config.d_kv,
      "d_ff": config.d_ff,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "feed_forward_proj": config.feed_forward,
      "dense_act_fn": DENSE_ACT_FN[config.feed_forward],
      "is_gated_act": config.feed_forward == "gated-gelu",
      "tie_word_embeddings": config.tie_word_embeddings,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "initializer_factor": 1.0,
      "is_encoder_decoder": True,
      "use_cache": True,
      "pad_token_id": config.pad_token_id,
      "eos_token_id": config.eos_token_id,
      "decoder_start_token_id": config.decoder_start_token_id,
      "dtype": config.param_dtype,
  }
  if not mt5:  # MT5Config has no such key (T5Config guarantees mT5 is unscaled)
    out["scale_decoder_outputs"] = config.scales_outputs
  return out


# -------------------------------- tensors -----------------------------------


def _abstract_params(config: t5.T5Config):
  """Boxed (logically partitioned) shapes/dtypes of the model's params, no FLOPs."""
  dummy = jnp.ones((1, 1), jnp.int32)
  return jax.eval_shape(
      lambda: t5.T5(config).init(jax.random.PRNGKey(0), dummy, dummy)["params"])


def _check_tensors(source: hf_tensors.TensorSource, maps: list[TensorMap], abstract,
                   config: t5.T5Config, ckpt_dir: str) -> Optional[str]:
  """Validates names and shapes; returns the lm_head source name or None.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected and mis-shaped
      tensor with expected vs actual shapes.
  """
  present = source.names()
  expected = hf_tensors.expected_shapes(maps, abstract)
  embed_shape = expected["shared.weight"]
  head_source = None
  if not config.tie_word_embeddings and "lm_head.weight" not in present:
    config_path = os.path.join(ckpt_dir, CONFIG_NAME)
    if (os.path.exists(config_path)
        and _declares_tied_head(hf_tensors.read_json(config_path))):
      head_source = "embedding"  # HF ties lm_head to shared here; same function.
      del expected["lm_head.weight"]
  optional = list(EMBED_ALIASES[1:])  # tied aliases of shared.weight
  if config.tie_word_embeddings:
    optional.append("lm_head.weight")
  if "shared.weight" not in present and any(n in present for n in optional[:2]):
    optional.append("shared.weight")  # an alias supplies the embedding
    del expected["shared.weight"]
  for name in optional:
    if name in present:
      expected[name] = embed_shape
  hf_tensors.check_names_and_shapes(source, expected, set(IGNORED_TENSORS), ckpt_dir,
                                    "T5")
  return head_source


def _embedding(source: hf_tensors.TensorSource, config: t5.T5Config, ckpt_dir: str) -> np.ndarray:
  """The embedding table, after checking that every tied alias equals it."""
  names = [n for n in EMBED_ALIASES if n in source.names()]
  if config.tie_word_embeddings and "lm_head.weight" in source.names():
    names.append("lm_head.weight")
  table = source.get(names[0])
  for name in names[1:]:
    if not np.array_equal(source.get(name), table):
      what = ("the config ties the output head to the embedding "
              "(tie_word_embeddings=True), but load_config reads this checkpoint "
              "as untied" if name == "lm_head.weight" else "tied aliases must be identical")
      raise CheckpointMismatchError(
          f"Checkpoint {ckpt_dir}: {name} differs from {names[0]}; {what}.")
  return table


def load_params(ckpt_dir: str, config: Optional[t5.T5Config] = None, *,
                mesh: Optional[jax.sharding.Mesh] = None,
                rules: Optional[partitioning.LogicalRules] = None,
                param_dtype: Optional[str] = None) -> Params:
  """Loads a checkpoint into a plain (unboxed) params tree.

  Args:
    ckpt_dir: HF checkpoint directory.
    config: the model config; default `load_config(ckpt_dir)`.
    mesh: place every tensor directly into its NamedSharding on this mesh
      (`partitioning.param_shardings` of the model's logical axes: a dim its
      mesh axes do not divide is replicated); default: the default device.
    rules: logical axis rules; default `partitioning.standard_logical_axis_rules()`.
    param_dtype: storage dtype; default `config.param_dtype`.
  Returns:
    params tree as produced by `T5(config).init(...)["params"]`, unboxed.
  Raises:
    CheckpointMismatchError: missing / unexpected / mis-shaped / conflicting
      tensors (all listed).
  """
  config = config or load_config(ckpt_dir)
  if param_dtype is not None:
    config = dataclasses.replace(config, param_dtype=param_dtype)
  boxed = _abstract_params(config)
  abstract = nn.meta.unbox(boxed)
  shardings = None
  if mesh is not None:  # dims their mesh axes do not divide are replicated
    rules = partitioning.standard_logical_axis_rules() if rules is None else rules
    shardings = partitioning.param_shardings(boxed, mesh, rules)
  maps = tensor_maps(config)
  with contextlib.ExitStack() as stack:
    source = hf_tensors.TensorSource(ckpt_dir, stack)
    head_source = _check_tensors(source, maps, abstract, config, ckpt_dir)
    arrays = {"shared.weight": _embedding(source, config, ckpt_dir)}
    if head_source == "embedding":
      arrays["lm_head.weight"] = arrays["shared.weight"]
      logging.info("%s has no lm_head.weight and declares a tied head: "
                   "logits_dense is a copy of the embedding.", ckpt_dir)
    return hf_tensors.read_params(source, maps, abstract, shardings, arrays)


def load_checkpoint(ckpt_dir: str, **kwargs) -> tuple[t5.T5Config, Params]:
  """`(load_config(ckpt_dir), load_params(ckpt_dir, config, **kwargs))`."""
  config = load_config(ckpt_dir)
  if kwargs.get("param_dtype") is not None:
    config = dataclasses.replace(config, param_dtype=kwargs["param_dtype"])
  return config, load_params(ckpt_dir, config, **kwargs)


# --------------------------------- export -----------------------------------


def save_checkpoint(params: Params, config: t5.T5Config, out_dir: str,
                    max_shard_bytes: Optional[int] = None) -> None:
  """Writes `config.json` and safetensors weights in the HF layout
  (`hf_tensors.write_checkpoint`: a single file, or shards of at most
  `max_shard_bytes` plus an index)."""
  hf_tensors.write_checkpoint(params, tensor_maps(config), hf_config_dict(config),
                              out_dir, max_shard_bytes)
