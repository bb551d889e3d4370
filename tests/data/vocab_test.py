"""ptuning_jax.data.vocab gives the ids of seqio's and Hugging Face's T5 tokenizers.

What is compared:
  * `SentencePieceVocab.encode(text)` == `seqio.SentencePieceVocabulary(path,
    100).encode(text)` exactly (neither appends EOS), and `decode` ==
    seqio's `decode` on real and on random id sequences.
  * `SentencePieceVocab.encode(text) + [1]` == `T5Tokenizer(text).input_ids`
    (Hugging Face appends EOS id 1 by default; that is the only convention
    difference), the tokenizer being built offline from the same
    `spiece.model` (transformers 5: `T5Tokenizer` is the `tokenizers`-backed
    class, converted from the SentencePiece proto).
  * `ByteVocab` encode / decode == `seqio.ByteVocabulary()`.
Real text: the first 300 sentences of GLUE SST-2 dev and the premises and
hypotheses of the SuperGLUE RTE val examples (all 277; 854 strings).
"""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from ptuning_jax.data import vocab as vocab_lib

EXTRA_TEXTS = [
    "Hello world, it's a charming <extra_id_0> journey .",
    "<extra_id_5> starts and ends with a sentinel <extra_id_99>",
    "Ünïcödé — “quotes” 東京 emoji 🎉 tabs\tand  double  spaces",
    "",
    "   leading and trailing   ",
]


@pytest.fixture(scope="module")
def sentences(shared_data):
  out = []
  with open(shared_data / "glue" / "sst2" / "dev.tsv", encoding="utf-8") as f:
    rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(rows)
    assert header[0] == "sentence"
    out += [row[0] for _, row in zip(range(300), rows)]
  with open(shared_data / "super_glue" / "rte" / "val.jsonl",
            encoding="utf-8") as f:
    for _, line in zip(range(300), f):
      ex = json.loads(line)
      out += [ex["premise"], ex["hypothesis"]]
  assert len(out) == 300 + 2 * 277  # RTE val has only 277 examples
  return out


@pytest.fixture(scope="module")
def spm_pair(t5_vocab_path):
  import seqio  # pylint: disable=g-import-not-at-top
  return (vocab_lib.SentencePieceVocab(t5_vocab_path),
          seqio.SentencePieceVocabulary(str(t5_vocab_path), 100))


def _random_id_rows(vocab_size, rng, rows=200):
  """Id rows with EOS, pad, sentinels and out-of-range ids sprinkled in."""
  out = []
  for _ in range(rows):
    ids = rng.integers(0, vocab_size + 20, size=rng.integers(0, 30)).tolist()
    for special in (0, 1):
      if ids and rng.random() < 0.3:
        ids[rng.integers(len(ids))] = special
    out.append(ids)
  return out


@pytest.mark.needs("tensorflow", "seqio")
def test_sentencepiece_special_ids(spm_pair):
  ours, theirs = spm_pair
  assert ours.vocab_size == theirs.vocab_size == 32100
  assert (ours.pad_id, ours.eos_id, ours.unk_id) == (
      theirs.pad_id, theirs.eos_id, theirs.unk_id) == (0, 1, 2)
  assert ours.sentinel_id(0) == 32099 and ours.sentinel_id(99) == 32000
  assert ours.encode("<extra_id_0>")[-1] == 32099
  with pytest.raises(ValueError, match="sentinel k=100"):
    ours.sentinel_id(100)


@pytest.mark.needs("tensorflow", "seqio")
def test_sentencepiece_matches_seqio(spm_pair, sentences):
  ours, theirs = spm_pair
  for text in sentences + EXTRA_TEXTS:
    ids = ours.encode(text)
    assert ids == list(theirs.encode(text)), text
    assert ours.decode(ids + [1, 57, 0]) == theirs.decode(ids + [1, 57, 0])


@pytest.mark.needs("tensorflow", "seqio")
def test_sentencepiece_decode_matches_seqio_on_random_ids(spm_pair):
  ours, theirs = spm_pair
  rng = np.random.default_rng(0)
  for ids in _random_id_rows(ours.vocab_size, rng):
    assert ours.decode(ids) == theirs.decode(ids), ids
  row = np.array([8774, 296, 1, 999, 0])  # NumPy rows decode too
  assert ours.decode(row) == "Hello world"


@pytest.mark.needs("tensorflow", "seqio")
def test_sentencepiece_matches_hf_t5_tokenizer(spm_pair, sentences, tmp_path,
                                               t5_vocab_path):
  transformers = pytest.importorskip("transformers")
  (tmp_path / "spiece.model").symlink_to(t5_vocab_path)
  hf = transformers.T5Tokenizer.from_pretrained(str(tmp_path))
  ours, _ = spm_pair
  assert len(hf) == ours.vocab_size
  for text in sentences + EXTRA_TEXTS[:2]:
    assert hf(text).input_ids == ours.encode(text) + [1], text


def test_sentencepiece_bad_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model"):
    vocab_lib.SentencePieceVocab(tmp_path / "nope.model")


@pytest.mark.needs("tensorflow", "seqio")
def test_byte_vocab_matches_seqio(sentences):
  import seqio  # pylint: disable=g-import-not-at-top
  ours, theirs = vocab_lib.ByteVocab(), seqio.ByteVocabulary()
  assert ours.vocab_size == theirs.vocab_size == 259
  assert (ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2)
  for text in sentences + EXTRA_TEXTS:
    ids = ours.encode(text)
    assert ids == list(theirs.encode(text)), text
    assert ours.decode(ids + [1, 70]) == theirs.decode(ids + [1, 70]) == text
  rng = np.random.default_rng(1)
  for ids in _random_id_rows(ours.vocab_size, rng):
    assert ours.decode(ids) == theirs.decode(ids), ids


@pytest.mark.needs("tensorflow", "seqio")
def test_byte_vocab_known_ids_without_shared_data():
  import seqio  # pylint: disable=g-import-not-at-top
  ours = vocab_lib.ByteVocab()
  assert ours.encode("hé") == [104 + 3, 0xC3 + 3, 0xA9 + 3]
  for extra in (0, 7):
    assert (vocab_lib.ByteVocab(extra).vocab_size ==
            seqio.ByteVocabulary(extra).vocab_size)
  for text in EXTRA_TEXTS:
    assert ours.encode(text) == list(seqio.ByteVocabulary().encode(text))
  with pytest.raises(TypeError, match="expects str"):
    ours.encode(5)


def test_core_modules_import_without_tensorflow():
  code = ("import sys; import ptuning_jax.data.vocab, ptuning_jax.data.pipeline, "
          "ptuning_jax.data.synthetic; "
          "bad = [m for m in ('tensorflow', 'seqio') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)
