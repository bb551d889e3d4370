"""`ptuning-jax verify CHECKPOINT_DIR`: does ptuning_jax compute what transformers does?

Loads a Hugging Face checkpoint directory in ptuning_jax and, when torch and
transformers are installed, in transformers (local files only, both in
float32), runs one fixed padded batch (deterministic ids inside the
vocabulary, rows of different lengths) through both and compares:

  T5 / mT5: teacher-forced logits and their log-softmax, and greedy decodes
    token for token (ours `decoding.greedy_decode`, transformers `generate`
    with do_sample=False, num_beams=1; same start token, EOS and length).
  BERT / RoBERTa / XLM-R: the last hidden states, the pooler output where the
    checkpoint has a pooler, the masked-LM logits (and log-softmax) where it
    has an MLM head.

Outputs pass when max |Δ| <= tolerance (1e-4) at real (unpadded) positions.
A greedy disagreement fails unless, at the first differing step, ours scores
the two tokens within the tolerance (a near tie that rounding may break
either way); the report says which.

Diagnosis. Every hidden state is compared too (transformers'
`output_hidden_states=True`: the embeddings, then each layer's output; for T5
the last one is after the stack's final layer norm. Ours: Flax
`capture_intermediates` of the T5 layers and stacks, `BertEncoder.hidden_states`).
On a failure the report names the worst output position, the first hidden
state that diverges (not allclose with rtol = atol = tolerance, so large
activations do not count as divergence), the checkpoint tensors feeding that
layer and, among them, those whose loaded values differ between the two
implementations or are not finite.

Without torch / transformers only ours runs: every output and hidden state
must be finite, and the report says that the comparison was skipped.

Dimension letters: B batch, T input length, S decoder length, V vocabulary,
H hidden size, L layers.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax.backbones import bert
from ptuning_jax.backbones import layers
from ptuning_jax.backbones import t5
from ptuning_jax.backbones.hf import bert as hf_bert
from ptuning_jax.backbones.hf import t5 as hf_t5
from ptuning_jax.backbones.hf import tensors as hf_tensors
from ptuning_jax.models import decoding

TOLERANCE = 1e-4
BATCH = 3
LENGTH = 10  # T: rows hold LENGTH, LENGTH - 4 and LENGTH - 2 real tokens
DECODE_LENGTH = 8  # S: teacher-forced decoder length and greedy steps
LOGITS = ("logits", "mlm_logits")


class VerificationError(ValueError):
  """ptuning_jax and transformers disagree, or ours is not finite."""


@dataclasses.dataclass(frozen=True)
class Stage:
  """One compared array.

  Attributes:
    name: "logits", "encoder hidden_states[2]", ...
    what: what it is, for the report ("output of encoder block 1").
    tensors: HF names of the checkpoint tensors feeding it.
    mask: key of the batch's [B, T] mask selecting compared positions
      (dims 0, 1 of the array), or None for all.
    output: a model output (pass / fail); else a hidden state (diagnosis).
  """
  name: str
  what: str
  tensors: tuple[str, ...]
  mask: Optional[str]
  output: bool


# ----------------------------------- T5 -------------------------------------


class T5Family:
  """T5 / mT5: `backbones/hf/t5.py` + `backbones/t5.py`."""
  label = "T5 encoder-decoder (backbones/hf/t5.py + backbones/t5.py)"
  encoder_decoder = True

  def __init__(self, ckpt_dir: str):
    config, params = hf_t5.load_checkpoint(ckpt_dir, param_dtype="float32")
    self.config = dataclasses.replace(config, dtype="float32")
    self.params = params
    self.model = t5.T5(self.config)
    self.maps = {m.hf_name: m for m in hf_t5.tensor_maps(self.config)}

  def describe(self) -> str:
    c = self.config
    return (f"{c.num_encoder_layers}/{c.num_decoder_layers} layers, "
            f"d_model {c.d_model}, vocab {c.vocab_size}, head "
            f"{'tied' if c.tie_word_embeddings else 'untied'}, outputs "
            f"{'scaled' if c.scales_outputs else 'unscaled'}")

  def batch(self) -> dict[str, np.ndarray]:
    c = self.config
    mask = _real_tokens(LENGTH)
    enc = _ids(c.vocab_size, (c.pad_token_id, c.eos_token_id), LENGTH)
    enc[np.arange(BATCH), mask.sum(1) - 1] = c.eos_token_id
    enc[~mask] = c.pad_token_id
    dec = _ids(c.vocab_size, (c.pad_token_id,), DECODE_LENGTH, seed=5)
    dec[:, 0] = c.decoder_start_token_id
    return {"input_ids": enc, "encoder": mask, "decoder_input_ids": dec}

  def stages(self) -> list[Stage]:
    c = self.config
    out = []
    for stack, depth in (("encoder", c.num_encoder_layers),
                         ("decoder", c.num_decoder_layers)):
      relpos = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
      out.append(Stage(f"{stack} hidden_states[0]", f"{stack} embeddings",
                       ("shared.weight",), stack if stack == "encoder" else None, False))
      for k in range(1, depth + 1):
        names = [n for n in self.maps if n.startswith(f"{stack}.block.{k - 1}.")]
        names += [relpos] if relpos not in names else []
        what = f"output of {stack} block {k - 1}"
        if k == depth:
          names.append(f"{stack}.final_layer_norm.weight")
          what += f" after {stack}.final_layer_norm"
        out.append(Stage(f"{stack} hidden_states[{k}]", what, tuple(names),
                         stack if stack == "encoder" else None, False))
    head = "shared.weight" if c.tie_word_embeddings else "lm_head.weight"
    scaled = ", scaled by d_model**-0.5" if c.scales_outputs else ""
    out.append(Stage("logits", f"output head ({head}{scaled})", (head,), None, True))
    return out

  def ours(self, batch) -> dict[str, np.ndarray]:
    def forward(params, enc, dec):
      return self.model.apply({"params": params}, enc, dec, mutable=["intermediates"],
                              capture_intermediates=_t5_capture)
    logits, state = jax.jit(forward)(self.params, batch["input_ids"],
                                     batch["decoder_input_ids"])
    got = jax.tree_util.tree_map(np.asarray, state["intermediates"])
    out = {}
    for i, stack in enumerate(("encoder", "decoder")):
      depth = (self.config.num_encoder_layers, self.config.num_decoder_layers)[i]
      states = ([got["token_embedder"]["__call__"][i]]
                + [got[stack][f"layers_{k}"]["__call__"][0] for k in range(depth - 1)]
                + [got[stack]["__call__"][0]])
      out.update({f"{stack} hidden_states[{k}]": h for k, h in enumerate(states)})
    out["logits"] = np.asarray(logits)
    return out

  def load_transformers(self, ckpt_dir: str, transformers, torch) -> list:
    return [_from_pretrained(transformers.AutoModelForSeq2SeqLM, ckpt_dir, torch)]

  def theirs(self, models, batch, torch) -> dict[str, np.ndarray]:
    enc = torch.tensor(batch["input_ids"])
    with torch.no_grad():
      out = models[0](input_ids=enc, attention_mask=torch.tensor(batch["encoder"]).long(),
                      decoder_input_ids=torch.tensor(batch["decoder_input_ids"]),
                      output_hidden_states=True)
    got = {f"encoder hidden_states[{k}]": h for k, h in enumerate(out.encoder_hidden_states)}
    got.update({f"decoder hidden_states[{k}]": h
                for k, h in enumerate(out.decoder_hidden_states)})
    got["logits"] = out.logits
    return {k: v.numpy() for k, v in got.items()}

  def decode_ours(self, batch) -> np.ndarray:
    return np.asarray(decoding.jit_greedy_decode(
        self.model, self.params, jnp.asarray(batch["input_ids"]),
        max_decode_length=DECODE_LENGTH, eos_id=self.config.eos_token_id))

  def decode_theirs(self, models, batch, transformers, torch) -> np.ndarray:
    c = self.config
    from transformers import cache_utils  # pylint: disable=g-import-not-at-top
    # An explicit cache: transformers 5.24+ sizes its default one by the
    # encoder depth and fails when the decoder is deeper.
    cache = cache_utils.EncoderDecoderCache(cache_utils.DynamicCache(),
                                            cache_utils.DynamicCache())
    greedy = transformers.GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=DECODE_LENGTH, min_new_tokens=0,
        decoder_start_token_id=c.decoder_start_token_id, eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id)
    enc = torch.tensor(batch["input_ids"])
    with torch.no_grad():
      out = models[0].generate(input_ids=enc,
                               attention_mask=torch.tensor(batch["encoder"]).long(),
                               generation_config=greedy, cache=cache).numpy()
    return out[:, 1:]  # drop the start token

  def step_logits(self, batch, row: int, prefix: np.ndarray) -> np.ndarray:
    """Ours' teacher-forced logits [V] after `prefix` (generated tokens) of `row`."""
    c = self.config
    dec = np.concatenate([[c.decoder_start_token_id], prefix]).astype(np.int32)[None]
    logits = self.model.apply({"params": self.params},
                              jnp.asarray(batch["input_ids"][row:row + 1]), jnp.asarray(dec))
    return np.asarray(logits)[0, -1]

  def our_tensor(self, name: str) -> Optional[np.ndarray]:
    """Our loaded value of HF tensor `name`, in HF's layout (None: not ours)."""
    if name == "lm_head.weight" and self.config.tie_word_embeddings:
      name = "shared.weight"
    return _in_hf_layout(self.params, self.maps.get(name))


def _t5_capture(module, method_name: str) -> bool:
  """capture_intermediates filter: embeddings, every layer and stack output."""
  return method_name == "__call__" and isinstance(
      module, (t5.EncoderLayer, t5.DecoderLayer, t5.Encoder, t5.Decoder, layers.Embed))


# ----------------------------------- BERT -----------------------------------


class BertFamily:
  """BERT / RoBERTa / XLM-R: `backbones/hf/bert.py` + `backbones/bert.py`."""
  label = "BERT-family encoder (backbones/hf/bert.py + backbones/bert.py)"
  encoder_decoder = False

  def __init__(self, ckpt_dir: str):
    self.config, self.params = hf_bert.load_checkpoint(ckpt_dir, dtype="float32",
                                                       param_dtype="float32")
    self.model = bert.BertEncoder(self.config)
    self.maps = {m.hf_name: m for m in hf_bert.stored_tensor_maps(ckpt_dir, self.config)}
    self.prefix = hf_bert.backbone_prefix(ckpt_dir)

  def describe(self) -> str:
    c = self.config
    heads = [h for h, on in (("pooler", c.with_pooler), ("MLM head", c.with_mlm_head)) if on]
    return (f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, vocab {c.vocab_size}"
            f", {' + '.join(heads) if heads else 'no pooler, no MLM head'}")

  def batch(self) -> dict[str, np.ndarray]:
    c = self.config
    length = min(LENGTH, c.max_length)
    mask = _real_tokens(length)
    ids = _ids(c.vocab_size, (c.pad_token_id,), length)
    ids[~mask] = c.pad_token_id
    types = np.zeros_like(ids)
    if c.type_vocab_size > 1:  # a second segment in the first row
      types[0, ids.shape[1] // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

  def stages(self) -> list[Stage]:
    c, p = self.config, self.prefix
    names = list(self.maps)
    out = [Stage("hidden_states[0]", "embeddings output",
                 tuple(n for n in names if n.startswith(f"{p}embeddings.")),
                 "attention_mask", False)]
    for k in range(1, c.num_hidden_layers + 1):
      out.append(Stage(f"hidden_states[{k}]", f"output of encoder layer {k - 1}",
                       tuple(n for n in names if n.startswith(f"{p}encoder.layer.{k - 1}.")),
                       "attention_mask", False))
    out.append(Stage("last_hidden_state", f"output of encoder layer {c.num_hidden_layers - 1}",
                     out[-1].tensors, "attention_mask", True))
    if c.with_pooler:
      out.append(Stage("pooler_output", "pooler on the first position",
                       tuple(n for n in names if n.startswith(f"{p}pooler.")), None, True))
    if c.with_mlm_head:
      mlm = tuple(n for n, m in self.maps.items() if m.path[0] == "mlm_head")
      out.append(Stage("mlm_logits", "masked-LM head",
                       mlm + (f"{p}embeddings.word_embeddings.weight",), "attention_mask", True))
    return out

  def ours(self, batch) -> dict[str, np.ndarray]:
    model, cfg = self.model, self.config

    def forward(params, ids, mask, types):
      variables = {"params": params}
      states, _ = model.apply(variables, ids, mask, types, method=model.hidden_states)
      out = {f"hidden_states[{k}]": h for k, h in enumerate(states)}
      out["last_hidden_state"] = states[-1]
      if cfg.with_pooler:
        out["pooler_output"] = model.apply(variables, states[-1][:, 0], method=model.pool)
      if cfg.with_mlm_head:
        out["mlm_logits"] = model.apply(variables, states[-1], method=model.mlm_logits)
      return out

    got = jax.jit(forward)(self.params, batch["input_ids"], batch["attention_mask"],
                           batch["token_type_ids"])
    return {k: np.asarray(v, np.float32) for k, v in got.items()}

  def load_transformers(self, ckpt_dir: str, transformers, torch) -> list:
    models = [_from_pretrained(transformers.AutoModel, ckpt_dir, torch)]
    if self.config.with_mlm_head:
      models.append(_from_pretrained(transformers.AutoModelForMaskedLM, ckpt_dir, torch))
    return models

  def theirs(self, models, batch, torch) -> dict[str, np.ndarray]:
    inputs = {"input_ids": torch.tensor(batch["input_ids"]),
              "attention_mask": torch.tensor(batch["attention_mask"]).long(),
              "token_type_ids": torch.tensor(batch["token_type_ids"])}
    with torch.no_grad():
      out = models[0](**inputs, output_hidden_states=True)
      got = {f"hidden_states[{k}]": h for k, h in enumerate(out.hidden_states)}
      got["last_hidden_state"] = out.last_hidden_state
      if self.config.with_pooler:
        got["pooler_output"] = out.pooler_output
      if self.config.with_mlm_head:
        got["mlm_logits"] = models[1](**inputs).logits
    return {k: v.numpy() for k, v in got.items()}

  def our_tensor(self, name: str) -> Optional[np.ndarray]:
    return _in_hf_layout(self.params, self.maps.get(name))


# --------------------------------- dispatch ---------------------------------


# Registered backbone family -> its verifier (adding a family adds one entry).
VERIFIERS = {"t5": "T5Family", "bert": "BertFamily"}


def family_for(model_type: Any, config_path: str):
  """The verifier of HF `model_type`: its registered family's entry of
  VERIFIERS (`backbones.registry` decides which family a type belongs to)."""
  from ptuning_jax.backbones import registry  # pylint: disable=g-import-not-at-top
  family = registry.for_model_type(model_type, config_path)
  if family.name not in VERIFIERS:
    raise ValueError(f"{config_path}: the {family.name} family has no verifier "
                     f"(verify supports {sorted(VERIFIERS)}).")
  return globals()[VERIFIERS[family.name]]


# --------------------------------- helpers ----------------------------------


def _ids(vocab_size: int, avoid: Sequence[int], length: int, seed: int = 0) -> np.ndarray:
  """Deterministic ids [B, T] in [0, V), none of them in `avoid`."""
  allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(avoid))
  rows, cols = np.meshgrid(np.arange(BATCH), np.arange(length), indexing="ij")
  return allowed[(7919 * rows + 104729 * cols + 31 * seed + 3) % len(allowed)].astype(np.int32)


def _real_tokens(length: int) -> np.ndarray:
  """[B, T] bool: rows hold T, T - 4 and T - 2 real tokens, then padding."""
  lengths = np.array([length, max(1, length - 4), max(1, length - 2)])[:BATCH]
  return np.arange(length)[None, :] < lengths[:, None]


def _in_hf_layout(params, tensor_map) -> Optional[np.ndarray]:
  if tensor_map is None:
    return None
  ours = np.asarray(hf_tensors.flat(params)[tensor_map.path], np.float32)
  return hf_tensors.to_hf(ours, tensor_map.kind)


def _transformers():
  """(transformers, torch), or None when either is not installed."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return transformers, torch


def _from_pretrained(auto_class, ckpt_dir: str, torch):
  from transformers.utils import logging  # pylint: disable=g-import-not-at-top
  level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
  logging.set_verbosity_error()  # what differs is reported by the comparison
  logging.disable_progress_bar()
  try:
    return auto_class.from_pretrained(ckpt_dir, dtype=torch.float32,
                                      local_files_only=True).eval()
  finally:
    logging.set_verbosity(level)
    if bars:
      logging.enable_progress_bar()


def _their_tensor(state: dict, name: str) -> Optional[np.ndarray]:
  """transformers' loaded tensor for checkpoint name `name` (prefixes and
  legacy LayerNorm names resolved), or None."""
  base = name.replace(".gamma", ".weight").replace(".beta", ".bias")
  for prefix in hf_bert.PREFIXES:
    if prefix and base.startswith(prefix):
      base = base[len(prefix):]
  for candidate in [name, base] + [p + base for p in hf_bert.PREFIXES if p]:
    if candidate in state:
      return state[candidate].detach().float().numpy()
  return None


# -------------------------------- comparison --------------------------------


@dataclasses.dataclass(frozen=True)
class Diff:
  """ours vs transformers on one stage.

  Attributes:
    stage: what was compared.
    max_abs: max |Δ| over the compared positions (inf where either side is
      not finite).
    worst: index of that maximum.
    ours: our value there.
    theirs: transformers' value there.
    diverged: outputs: max_abs > tolerance; hidden states: not allclose with
      rtol = atol = tolerance.
  """
  stage: Stage
  max_abs: float
  worst: tuple[int, ...]
  ours: float
  theirs: float
  diverged: bool


@dataclasses.dataclass(frozen=True)
class DecodeCheck:
  """Greedy decodes, token for token (`agree`), or why not."""
  agree: bool
  near_tie: bool
  detail: str


def _diff(stage: Stage, ours: np.ndarray, theirs: np.ndarray, mask: Optional[np.ndarray],
          tolerance: float) -> Diff:
  if ours.shape != theirs.shape:
    raise VerificationError(f"{stage.name}: ours has shape {list(ours.shape)}, "
                            f"transformers {list(theirs.shape)}.")
  ours, theirs = ours.astype(np.float32), theirs.astype(np.float32)
  with np.errstate(invalid="ignore", over="ignore"):
    d = np.abs(ours - theirs)
  d = np.where(np.isnan(d), np.inf, d)  # NaN / inf on either side: infinitely far
  bound = tolerance if stage.output else tolerance * (1.0 + np.abs(theirs))
  over = np.isinf(d) | (d > bound)
  if mask is not None:
    keep = _broadcast(mask, d)
    d, over = np.where(keep, d, 0.0), over & keep
  worst = np.unravel_index(int(np.argmax(d)), d.shape)
  return Diff(stage, float(d[worst]), tuple(int(i) for i in worst), float(ours[worst]),
              float(theirs[worst]), bool(over.any()))


def _broadcast(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
  """A [B, T] mask with trailing unit dims to broadcast against `like`."""
  return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def _log_softmax(x: np.ndarray) -> np.ndarray:
  return np.asarray(jax.nn.log_softmax(jnp.asarray(x, jnp.float32), axis=-1))


def compare(stages: Sequence[Stage], ours: dict, theirs: dict, batch: dict,
            tolerance: float) -> list[Diff]:
  """A Diff per stage, in forward order; logits also as log-softmax."""
  diffs = []
  for stage in stages:
    mask = None if stage.mask is None else batch[stage.mask]
    diffs.append(_diff(stage, ours[stage.name], theirs[stage.name], mask, tolerance))
    if stage.name in LOGITS:
      log_stage = dataclasses.replace(stage, name=f"log_softmax({stage.name})")
      diffs.append(_diff(log_stage, _log_softmax(ours[stage.name]),
                         _log_softmax(theirs[stage.name]), mask, tolerance))
  return diffs


def _until_eos(tokens: np.ndarray, eos: int) -> list[int]:
  tokens = [int(t) for t in tokens]
  return tokens[:tokens.index(eos) + 1] if eos in tokens else tokens


def compare_decodes(family: T5Family, batch: dict, ours: np.ndarray, theirs: np.ndarray,
                    tolerance: float) -> DecodeCheck:
  """Token-for-token agreement up to each row's first EOS."""
  eos = family.config.eos_token_id
  for row in range(ours.shape[0]):
    a, b = _until_eos(ours[row], eos), _until_eos(theirs[row], eos)
    if a == b:
      continue
    step = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
    logits = family.step_logits(batch, row, np.asarray(a[:step], np.int64))
    margin = abs(float(logits[a[step]] - logits[b[step]]))
    near_tie = margin <= tolerance
    detail = (f"differ at row {row}, step {step}: ours {a[step]}, transformers {b[step]}; "
              f"ours' logits for the two differ by {margin:.1e}"
              + (f" <= {tolerance:.0e}: a near tie, not counted as a failure"
                 if near_tie else ""))
    return DecodeCheck(False, near_tie, detail)
  return DecodeCheck(True, False, f"agree token for token ({ours.shape[0]} rows x "
                     f"{ours.shape[1]} steps)")


def _where(stage_name: str, index: tuple[int, ...]) -> str:
  last = "id" if any(k in stage_name for k in LOGITS) else "dim"
  names = ("row", "position", last) if len(index) == 3 else ("row", last)
  return ", ".join(f"{n} {i}" for n, i in zip(names, index))


# --------------------------------- diagnosis --------------------------------


def _tensor_findings(family, names: Sequence[str], state: Optional[dict]) -> list[str]:
  """Tensors whose loaded values differ from transformers' or are not finite."""
  found = []
  for name in names:
    ours = family.our_tensor(name)
    if ours is None:
      continue
    bad = int(np.size(ours) - np.isfinite(ours).sum())
    if bad:
      found.append(f"{name} holds {bad} non-finite value(s) in ours")
    theirs = None if state is None else _their_tensor(state, name)
    if theirs is None:
      continue
    if theirs.shape != ours.shape:
      found.append(f"{name}: ours {list(ours.shape)}, transformers {list(theirs.shape)}")
      continue
    with np.errstate(invalid="ignore"):
      same = (ours == theirs) | (np.isnan(ours) & np.isnan(theirs))
      d = np.where(same, 0.0, np.nan_to_num(np.abs(ours - theirs), nan=np.inf))
    if d.max() > 0:
      i = np.unravel_index(int(np.argmax(d)), d.shape)
      found.append(f"{name} loaded differently: max |Δ| {d[i]:.1e} at {list(map(int, i))}"
                   f" (ours {ours[i]:.6g}, transformers {theirs[i]:.6g})")
  return found


def _culprit(stage: Stage, how: str, findings: list[str]) -> list[str]:
  lines = [f"{how}: {stage.name} ({stage.what})",
           f"tensors feeding it: {', '.join(stage.tensors)}"]
  lines += [f"  {f}" for f in findings]
  if not findings:
    lines.append("  none of them differs between ours and transformers or is non-finite"
                 ": the computation of this layer differs")
  return lines


# ---------------------------------- report ----------------------------------


@dataclasses.dataclass
class Report:
  """What `run` found; `lines()` is what the command prints."""
  ckpt_dir: str
  model_type: str
  family: Any
  batch: dict
  tolerance: float
  transformers: Optional[str] = None  # what was compared against; None: skipped
  diffs: list[Diff] = dataclasses.field(default_factory=list)
  decode: Optional[DecodeCheck] = None
  failures: list[str] = dataclasses.field(default_factory=list)
  diagnosis: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.failures

  def summary(self) -> str:
    """One line: the first failure and its culprit."""
    parts = self.failures[:1] + [l.strip() for l in self.diagnosis[:1]]
    parts += [l.strip() for l in self.diagnosis if l.startswith("  ")][:3]
    return "; ".join(parts)

  def lines(self) -> list[str]:
    batch = self.batch
    mask = batch.get("encoder", batch.get("attention_mask"))
    lines = [f"verify {self.ckpt_dir}",
             f"  model: {self.model_type}, {self.family.describe()}",
             f"  code: {self.family.label}",
             f"  batch: {mask.shape[0]} rows of {mask.shape[1]} tokens "
             f"({', '.join(str(int(n)) for n in mask.sum(1))} real, then padding)"
             + (f", {batch['decoder_input_ids'].shape[1]} decoder tokens"
                if "decoder_input_ids" in batch else "")]
    if self.transformers is None:
      lines.append("  transformers comparison SKIPPED: torch and transformers are not both "
                   "installed; ran ours only and checked that every output is finite")
    else:
      lines.append(f"  against {self.transformers}")
      lines += self._comparison_lines()
    lines += [f"  {l}" for l in self.diagnosis]
    verdict = (f"OK: every output within {self.tolerance:.0e}" if self.transformers
               else "OK: outputs finite (not compared)")
    lines.append(f"  {verdict}" if self.ok else f"  FAILED: {self.failures[0]}")
    return lines

  def _comparison_lines(self) -> list[str]:
    lines = [f"  outputs, max |Δ| at real positions (tolerance {self.tolerance:.0e}):"]
    for d in self.diffs:
      if d.stage.output:
        lines.append(f"    {d.stage.name:<26} {d.max_abs:.1e}  "
                     f"{'FAIL' if d.diverged else 'ok'}  (worst: {_where(d.stage.name, d.worst)})")
    if self.decode is not None:
      lines.append(f"    {'greedy decode':<26} {self.decode.detail}")
    groups: dict[str, list[str]] = {}
    for d in self.diffs:
      if not d.stage.output:
        group = d.stage.name.split("[")[0]
        groups.setdefault(group, []).append(f"{d.max_abs:.1e}" + ("*" if d.diverged else ""))
    for group, values in groups.items():
      lines.append(f"  {group}[0..{len(values) - 1}] max |Δ|: {' '.join(values)}")
    if any(d.diverged for d in self.diffs if not d.stage.output):
      lines.append("  (* = diverged: not allclose with rtol = atol = tolerance)")
    return lines


# ------------------------------------ run ------------------------------------


def run(ckpt_dir: str | os.PathLike, tolerance: float = TOLERANCE) -> Report:
  """Loads `ckpt_dir` in ptuning_jax (and transformers) and compares them.

  Raises:
    FileNotFoundError: no such directory, no config.json, no weights.
    ValueError: an unsupported model_type or config value, or a tensor
      mismatch (`CheckpointMismatchError`), naming the culprit.
  """
  ckpt_dir = os.fspath(ckpt_dir)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"{ckpt_dir} is not a checkpoint directory.")
  config_path = os.path.join(ckpt_dir, hf_t5.CONFIG_NAME)
  model_type = hf_tensors.read_json(config_path).get("model_type")
  family = family_for(model_type, config_path)(ckpt_dir)
  batch = family.batch()
  ours = family.ours(batch)
  report = Report(ckpt_dir, model_type, family, batch, tolerance)
  lib = _transformers()
  if lib is None:
    _check_finite(report, ours)
    return report
  transformers, torch = lib
  models = family.load_transformers(ckpt_dir, transformers, torch)
  report.transformers = (f"transformers {transformers.__version__} "
                         f"({', '.join(type(m).__name__ for m in models)}), float32, "
                         "local files only")
  report.diffs = compare(family.stages(), ours, family.theirs(models, batch, torch),
                         batch, tolerance)
  if family.encoder_decoder:
    report.decode = compare_decodes(
        family, batch, family.decode_ours(batch),
        family.decode_theirs(models, batch, transformers, torch), tolerance)
  _diagnose(report, models)
  return report


def _output_failure(d: Diff, tolerance: float) -> str:
  where = _where(d.stage.name, d.worst)
  if np.isinf(d.max_abs):
    return (f"{d.stage.name} is not finite at {where} (ours {d.ours:.6g}, "
            f"transformers {d.theirs:.6g})")
  return (f"{d.stage.name} max |Δ| {d.max_abs:.1e} > {tolerance:.0e} at {where} "
          f"(ours {d.ours:.6g}, transformers {d.theirs:.6g})")


def _diagnose(report: Report, models: list) -> None:
  """Fills `failures` and, for a failure, `diagnosis` (the culprit)."""
  failed = [d for d in report.diffs if d.stage.output and d.diverged]
  report.failures = [_output_failure(d, report.tolerance) for d in failed]
  decode = report.decode
  if decode is not None and not decode.agree and not decode.near_tie:
    report.failures.append(f"greedy decodes {decode.detail}")
  if not report.failures:
    return
  first = next((d for d in report.diffs if not d.stage.output and d.diverged), None)
  how = "first divergent hidden state"
  if first is not None and np.isinf(first.max_abs):
    how = "first non-finite or divergent hidden state"
  if first is None and failed:
    first, how = failed[0], "no hidden state diverges; the difference arises in"
  if first is None:
    report.diagnosis = ["teacher-forced outputs agree: the greedy loops differ "
                        "(decoder cache or stopping)"]
    return
  state = {}
  for model in reversed(models):
    state.update(model.state_dict())
  findings = _tensor_findings(report.family, first.stage.tensors, state)
  report.diagnosis = _culprit(first.stage, how, findings)
  report.diagnosis.insert(1, f"  its max |Δ| {first.max_abs:.1e} at "
                          f"{_where(first.stage.name, first.worst)}")


def _check_finite(report: Report, ours: dict) -> None:
  """Ours only: the first stage (forward order) with a non-finite value fails."""
  for stage in report.family.stages():
    values = ours[stage.name]
    if stage.mask is not None:  # padding positions do not count
      values = np.where(_broadcast(report.batch[stage.mask], values), values, 0.0)
    bad = int(values.size - np.isfinite(values).sum())
    if bad:
      report.failures = [f"ours' {stage.name} holds {bad} non-finite value(s)"]
      findings = _tensor_findings(report.family, stage.tensors, None)
      report.diagnosis = _culprit(stage, "first non-finite", findings)
      return


def main(argv: Optional[Sequence[str]] = None) -> Report:
  """`ptuning-jax verify CHECKPOINT_DIR [--tolerance T]`: prints the report.

  Raises:
    VerificationError: outputs differ beyond the tolerance, greedy decodes
      disagree, or (without transformers) an output is not finite; the
      message names the worst output and the culprit layer and tensors.
  """
  parser = argparse.ArgumentParser(
      prog="ptuning-jax verify",
      description="Check that ptuning_jax loads a Hugging Face checkpoint as "
                  "transformers does (same outputs within the tolerance).")
  parser.add_argument("checkpoint_dir")
  parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                      help="max |Δ| allowed on each output (float32).")
  args = parser.parse_args(argv)
  report = run(args.checkpoint_dir, tolerance=args.tolerance)
  print("\n".join(report.lines()))
  if not report.ok:
    raise VerificationError(report.summary())
  return report
