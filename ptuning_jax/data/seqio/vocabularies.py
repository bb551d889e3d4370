"""SeqIO vocabularies: T5 SentencePiece (by path) and byte-level.

The SentencePiece model path is resolved when a vocabulary is first used,
in order, from: the explicit configuration (`configure(spm_path=...)`; a
run's gin file binds `seqio_data.SeqioData.spm_path`, which `SeqioData`
applies when built), the `PTUNING_JAX_SPM_PATH` environment variable, and
T5's public vocabulary on GCS (which needs network access; set one of the
others for offline use).
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import seqio

T5_GCS_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
SPM_PATH_ENV = "PTUNING_JAX_SPM_PATH"
# T5 adds 100 sentinel ids on top of the 32000 pieces (vocab size 32100;
# checkpoints pad the embedding to 32128).
T5_EXTRA_IDS = 100


_CONFIGURED: dict = {}


def configure(spm_path: Optional[str] = None) -> None:
  """Sets the SentencePiece model path of the T5 tasks (None forgets it)."""
  _CONFIGURED["spm_path"] = spm_path


def default_spm_path() -> str:
  """The configured path, else $PTUNING_JAX_SPM_PATH, else T5's GCS copy."""
  return (_CONFIGURED.get("spm_path")
          or os.environ.get(SPM_PATH_ENV, T5_GCS_SPM_PATH))


@functools.lru_cache(maxsize=None)
def sentencepiece_vocabulary(path: Optional[str] = None,
                             extra_ids: int = T5_EXTRA_IDS) -> seqio.Vocabulary:
  """T5-style SentencePiece vocabulary (pad 0, eos 1, unk 2)."""
  return seqio.SentencePieceVocabulary(path or default_spm_path(), extra_ids)


@functools.lru_cache(maxsize=None)
def byte_vocabulary(extra_ids: int = 0) -> seqio.Vocabulary:
  """ByT5-style byte vocabulary: ids 0-2 special, bytes at 3..258."""
  return seqio.ByteVocabulary(extra_ids)


def default_vocabulary() -> seqio.Vocabulary:
  return sentencepiece_vocabulary(default_spm_path())
