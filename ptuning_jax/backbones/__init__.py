"""What is frozen: backbone families, their modules and checkpoint import/export.

The registered families (`registry.REGISTRY`):
  t5    T5 1.1, original T5, LM-adapted T5, Flan-T5, mT5 (seq2seq)
  bert  BERT, RoBERTa, XLM-R, MiniLM (encoder)
"""
import jax.numpy as _jnp

from ptuning_jax.backbones import bert as _bert
from ptuning_jax.backbones import registry
from ptuning_jax.backbones import t5 as _t5
from ptuning_jax.backbones.backbone import Backbone
from ptuning_jax.backbones.backbone import BackboneSpec
from ptuning_jax.backbones.backbone import abstract
from ptuning_jax.backbones.backbone import frozen_shardings
from ptuning_jax.backbones.backbone import load
from ptuning_jax.backbones.hf import bert as _hf_bert
from ptuning_jax.backbones.hf import t5 as _hf_t5


def _two_token_rows(config):
  del config
  return (_jnp.ones((1, 1), _jnp.int32), _jnp.ones((1, 1), _jnp.int32))


T5 = registry.register(registry.Family(
    name="t5", kind="seq2seq", model_types=("t5", "mt5"), config_type=_t5.T5Config,
    module=_t5.T5, hook_spec=_t5.hook_spec, init_args=_two_token_rows,
    embedding=lambda params: params["token_embedder"]["embedding"],
    load_config=_hf_t5.load_config, load_params=_hf_t5.load_params,
    save=_hf_t5.save_checkpoint, override=_t5.with_overrides,
    num_params=_t5.num_params))

BERT = registry.register(registry.Family(
    name="bert", kind="encoder", model_types=("bert", "roberta", "xlm-roberta"),
    config_type=_bert.BertConfig, module=_bert.BertEncoder, hook_spec=_bert.hook_spec,
    init_args=_two_token_rows, embedding=_bert.word_embeddings,
    load_config=_hf_bert.load_config, load_params=_hf_bert.load_params,
    save=_hf_bert.save_checkpoint, override=_bert.with_overrides,
    num_params=_bert.num_params))

__all__ = ["Backbone", "BackboneSpec", "abstract", "frozen_shardings", "load",
           "registry", "T5", "BERT"]
