"""Test helpers: tiny T5 configs, random params, random HF T5 and BERT-family
checkpoints.

torch / transformers are optional dependencies: they are imported inside the
functions that need them.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax.backbones import t5

Params = Any


def tiny_config(**overrides) -> t5.T5Config:
  """The deliberately odd "tiny" preset (3 heads of 5, 2/3 layers) + overrides."""
  return t5.get_config("tiny", **overrides)


def byte_config(**overrides) -> t5.T5Config:
  """`tiny_config` over the byte vocabulary (the synthetic seqio tasks')."""
  from ptuning_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  return tiny_config(vocab_size=vocab_lib.ByteVocab().vocab_size, **overrides)


def init_params(config: t5.T5Config, seed: int = 0) -> Params:
  """Random unboxed params of `t5.T5(config)`, drawn with numpy.

  Same tree, shapes, dtypes and distributions as `T5(config).init` (normal
  with the modules' standard deviations; RMS-norm scales are ones) but not the
  same values: compiling Flax's per-parameter threefry initialisation costs
  seconds of CPU per config, numpy costs nothing.
  """
  dummy = jnp.ones((1, 1), jnp.int32)
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: t5.T5(config).init(jax.random.PRNGKey(0), dummy, dummy)["params"]))
  rng = np.random.RandomState(seed)

  def draw(path, leaf):
    names = [p.key for p in path]
    std = _init_stddev(names, config)
    if std is None:
      value = np.ones(leaf.shape, np.float32)
    else:
      value = rng.standard_normal(leaf.shape).astype(np.float32) * np.float32(std)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _init_stddev(names: list[str], config: t5.T5Config) -> Optional[float]:
  """The initializer stddev `layers` uses for a parameter (None: ones)."""
  h, d, f = config.d_model, config.d_kv, config.d_ff
  if names[-1] == "scale":
    return None
  owner = names[-2]
  table = {"query": (h * d) ** -0.5, "key": h ** -0.5, "value": h ** -0.5,
           "out": (config.num_heads * d) ** -0.5, "wi": h ** -0.5, "wi_0": h ** -0.5,
           "wi_1": h ** -0.5, "wo": f ** -0.5, "token_embedder": 1.0,
           "relpos_bias": 1.0, "logits_dense": 1.0}
  if owner not in table:
    raise ValueError(f"No initializer known for parameter {'/'.join(names)}.")
  return table[owner]


def hf_config(config: t5.T5Config, scale: Optional[bool] = None):
  """The equivalent `transformers.T5Config` / `MT5Config` (dropout as in `config`)."""
  import transformers  # pylint: disable=g-import-not-at-top
  scale = config.scales_outputs if scale is None else scale
  mt5 = config.model_type == "mt5"
  if mt5 and scale:
    raise ValueError("transformers' mT5 never scales its decoder outputs.")
  return (transformers.MT5Config if mt5 else transformers.T5Config)(
      vocab_size=config.vocab_size, d_model=config.d_model,
      num_heads=config.num_heads, d_kv=config.d_kv, d_ff=config.d_ff,
      num_layers=config.num_encoder_layers,
      num_decoder_layers=config.num_decoder_layers,
      relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance,
      feed_forward_proj=config.feed_forward, dropout_rate=config.dropout_rate,
      layer_norm_epsilon=config.layer_norm_epsilon,
      pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id,
      decoder_start_token_id=config.decoder_start_token_id,
      # transformers 5: for T5 this kwarg sets `scale_decoder_outputs` (mT5
      # ignores it); weights are tied at construction regardless (untied below).
      tie_word_embeddings=scale)


def make_hf_model(config: t5.T5Config, seed: int = 0, tie: Optional[bool] = None):
  """A random-weight `transformers.T5ForConditionalGeneration` in eval mode.

  Args:
    config: the architecture; `config.scales_outputs` decides the output
      scaling (HF `scale_decoder_outputs`), `config.model_type` the class
      (`T5ForConditionalGeneration` or `MT5ForConditionalGeneration`).
    seed: torch seed of the random weights.
    tie: whether `lm_head` shares the embedding's weights; default
      `config.tie_word_embeddings`. Untied heads get their own random
      weights. The encoder/decoder `embed_tokens` always share `shared`.
  Layer-norm weights are random too (HF initialises them to ones), so parity
  tests also check where each norm's weights go.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  tie = config.tie_word_embeddings if tie is None else tie
  torch.manual_seed(seed)
  model_cls = (transformers.MT5ForConditionalGeneration if config.model_type == "mt5"
               else transformers.T5ForConditionalGeneration)
  model = model_cls(hf_config(config))
  generator = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():  # HF initialises layer norms to ones; randomise them
    for name, param in model.named_parameters():
      if "layer_norm" in name:
        param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))
  if not tie:
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn(
        config.vocab_size, config.d_model, generator=generator))
    model.all_tied_weights_keys = {
        k: v for k, v in model.all_tied_weights_keys.items() if k != "lm_head.weight"}
  assert model.encoder.embed_tokens.weight is model.shared.weight
  assert model.decoder.embed_tokens.weight is model.shared.weight
  assert (model.lm_head.weight is model.shared.weight) == tie
  return model.eval()


def make_hf_t5(tmp_dir: str, config: t5.T5Config, seed: int = 0,
               tie: Optional[bool] = None) -> str:
  """Saves a random HF T5 (see `make_hf_model`) as safetensors; returns the dir."""
  model = make_hf_model(config, seed=seed, tie=tie)
  path = os.path.join(str(tmp_dir), f"hf_t5_seed{seed}")
  model.save_pretrained(path, safe_serialization=True)
  return path


def load_hf_model(path: str):
  """`AutoModelForSeq2SeqLM.from_pretrained(path)` (the class of its
  `model_type`: T5 or mT5) in float32 eval mode, local files only."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  transformers.logging.set_verbosity_error()
  return transformers.AutoModelForSeq2SeqLM.from_pretrained(
      path, dtype=torch.float32, local_files_only=True).eval()


def randomize_torch(model, seed: int):
  """Every weight of a torch model random (LayerNorm scales around 1), so a
  parity check covers all of them; returns the model in eval mode."""
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      base = 1.0 if name.endswith(("LayerNorm.weight", "layer_norm.weight")) else 0.0
      p.copy_(base + 0.5 * torch.randn(p.shape, generator=gen))
  return model.eval()


def make_hf_bert(tmp_dir: str, kind: str = "bert", seed: int = 0):
  """A random odd-shaped BERT-family checkpoint saved as safetensors.

  kind "bert": BERT pretraining layout (ReLU, 3 token types, pooler, MLM and
  NSP heads; 4 heads of 5). kind "roberta": RoBERTa MLM (3 heads of 12, tanh
  GELU, positions from pad + 1). Returns (directory, the torch model).
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  if kind == "bert":
    config = transformers.BertConfig(
        vocab_size=89, hidden_size=20, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=28, max_position_embeddings=30, type_vocab_size=3,
        hidden_act="relu")
    cls, weight_seed = transformers.BertForPreTraining, 2
  elif kind == "roberta":
    config = transformers.RobertaConfig(
        vocab_size=97, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=52, max_position_embeddings=40, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_act="gelu_new",
        layer_norm_eps=1e-5)
    cls, weight_seed = transformers.RobertaForMaskedLM, 1
  else:
    raise ValueError(f"make_hf_bert: kind={kind!r}; expected 'bert' or 'roberta'.")
  torch.manual_seed(seed)
  model = randomize_torch(cls(config), weight_seed + seed)
  path = os.path.join(str(tmp_dir), f"tiny_{kind}_seed{seed}")
  model.save_pretrained(path)
  return path, model


def padded_ids(vocab: int, lengths, total: int, pad_id: int, seed: int = 0,
               left=()) -> tuple[np.ndarray, np.ndarray]:
  """ids, mask [B, T]: random ids in [3, vocab), rows of `lengths`, padded on
  the right (rows listed in `left`: on the left)."""
  rng = np.random.default_rng(seed)
  ids = np.full((len(lengths), total), pad_id, np.int64)
  mask = np.zeros((len(lengths), total), np.int64)
  for b, n in enumerate(lengths):
    span = slice(total - n, total) if b in left else slice(0, n)
    ids[b, span] = rng.integers(3, vocab, n)
    mask[b, span] = 1
  return ids, mask


# --------------------------------------- a tiny GLUE world (BERT family)

GLUE_WORDS = ("the a man woman dog cat runs sat ran is was not happy sad rain it "
              "because so water flowed he she said good bad movie").split()
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert_config(**overrides):
  """An odd tiny BERT config over the `GLUE_WORDS` WordPiece vocabulary."""
  from ptuning_jax.backbones import bert  # pylint: disable=g-import-not-at-top
  fields = dict(vocab_size=len(BERT_SPECIALS) + len(GLUE_WORDS) + 1, hidden_size=16,
                num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=64)
  fields.update(overrides)
  return bert.BertConfig(**fields)


def write_wordpiece_tokenizer(directory: str) -> str:
  """A WordPiece `tokenizer.json` with BERT's template over `GLUE_WORDS`."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import models, normalizers, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top
  vocab = {token: i for i, token in enumerate(BERT_SPECIALS + GLUE_WORDS + ["."])}
  tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  return directory


def write_glue_files(root: str, n_train: int = 12, n_eval: int = 6, seed: int = 0) -> str:
  """RTE and COPA (SuperGLUE JSONL) and STS-B (GLUE TSV) files of random
  sentences over `GLUE_WORDS`, in the official layout below `root`."""
  import json  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)

  def sentence(n):
    return " ".join(rng.choice(GLUE_WORDS, n)) + " ."

  def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)

  for split, n in (("train", n_train), ("val", n_eval)):
    write(os.path.join(root, f"super_glue/rte/{split}.jsonl"), "".join(json.dumps(
        {"premise": sentence(6), "hypothesis": sentence(3), "idx": i,
         "label": ["entailment", "not_entailment"][i % 2]}) + "\n" for i in range(n)))
    write(os.path.join(root, f"super_glue/copa/{split}.jsonl"), "".join(json.dumps(
        {"premise": sentence(4), "choice1": sentence(3), "choice2": sentence(3),
         "question": ["cause", "effect"][i % 2], "label": i % 2, "idx": i}) + "\n"
        for i in range(n)))
  header = "\t".join(["index", "genre", "filename", "year", "old_index", "source1",
                      "source2", "sentence1", "sentence2", "score"]) + "\n"
  for split, n in (("train", n_train), ("dev", n_eval)):
    write(os.path.join(root, f"glue/stsb/{split}.tsv"), header + "".join(
        f"{i}\tg\tf\ty\to\ts\ts\t{sentence(4)}\t{sentence(4)}\t{i % 5 + 0.5}\n"
        for i in range(n)))
  return root


def write_tiny_bert_checkpoint(directory: str, seed: int = 0, **overrides) -> str:
  """A random `tiny_bert_config` BERT in the Hugging Face layout, with the
  `GLUE_WORDS` tokenizer beside it (what `ptuning-jax train` loads)."""
  from ptuning_jax.backbones import bert  # pylint: disable=g-import-not-at-top
  from ptuning_jax.backbones.hf import bert as hf_bert  # pylint: disable=g-import-not-at-top
  config = tiny_bert_config(**overrides)
  hf_bert.save_checkpoint(bert.init_params(config, seed), config, directory)
  return write_wordpiece_tokenizer(directory)


def installed(module: str, repo) -> bool:
  """Whether `module` is installed; a folder of the repository `repo` that a
  test put on sys.path (tests/data/seqio for seqio) is a namespace package,
  not the module."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec(module)
  if spec is None or spec.origin is not None:
    return spec is not None
  return any(pathlib.Path(repo) not in pathlib.Path(p).resolve().parents
             for p in spec.submodule_search_locations)
