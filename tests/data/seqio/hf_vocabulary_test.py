"""data.hf_vocabulary: a seqio vocabulary over all-MiniLM-L6-v2's tokenizer."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from ptuning_jax.backbones.hf import bert as hf_bert
from ptuning_jax.data.seqio import hf_vocabulary

transformers = pytest.importorskip("transformers")

TEXTS = ["It's a charming and often affecting journey.", "Unflinchingly bleak!",
         "Café au lait", ""]


@pytest.fixture(scope="module")
def vocab():
  try:
    return hf_vocabulary.all_minilm_l6_v2_vocabulary()
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def theirs():
  return transformers.AutoTokenizer.from_pretrained(
      str(hf_bert.all_minilm_l6_v2_dir()))


def test_ids_and_special_ids_follow_the_tokenizer(vocab, theirs):
  assert isinstance(vocab, seqio.Vocabulary)
  for text in TEXTS:
    assert vocab.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
  assert (vocab.eos_id, vocab.bos_id, vocab.pad_id, vocab.unk_id) == (
      theirs.sep_token_id, theirs.cls_token_id, theirs.pad_token_id,
      theirs.unk_token_id)
  assert vocab.vocab_size == len(theirs)


def test_encode_tf_matches_encode(vocab):
  for text in TEXTS:
    np.testing.assert_array_equal(vocab.encode_tf(tf.constant(text)).numpy(),
                                  np.asarray(vocab.encode(text), np.int32))
  ragged = vocab.encode_tf(tf.constant(TEXTS))
  assert isinstance(ragged, tf.RaggedTensor)
  assert ragged.to_list() == [vocab.encode(t) for t in TEXTS]
  with pytest.raises(ValueError, match="scalar or a vector"):
    vocab.encode_tf(tf.constant([["a"]]))


def test_decode_stops_at_the_separator(vocab):
  ids = vocab.encode("Hello world") + [vocab.eos_id] + vocab.encode("ignored")
  assert vocab.decode(ids) == "hello world"
  assert vocab.decode_tf(tf.constant(ids)).numpy() == b"hello world"
  batch = tf.constant([ids, vocab.encode("a b c") + [vocab.pad_id] * (len(ids) - 3)])
  assert vocab.decode_tf(batch).numpy().tolist() == [b"hello world", b"a b c"]


def test_seqio_tokenize_in_a_tf_data_pipeline(vocab, theirs):
  ds = tf.data.Dataset.from_tensor_slices({"inputs": TEXTS[:3]})
  features = {"inputs": seqio.Feature(vocab, add_eos=True)}
  ds = seqio.preprocessors.tokenize(ds, features)
  ds = seqio.preprocessors.append_eos_after_trim(ds, features)
  got = [ex["inputs"].tolist() for ex in ds.as_numpy_iterator()]
  # The model input of one sentence is [CLS] + these ids.
  assert [[theirs.cls_token_id] + ids for ids in got] == [
      theirs(t)["input_ids"] for t in TEXTS[:3]]


def test_equality_and_caching(vocab):
  again = hf_vocabulary.HFVocabulary(vocab.path)
  assert again == vocab and hash(again) == hash(vocab)
  assert hf_vocabulary.hf_vocabulary(vocab.path) is hf_vocabulary.hf_vocabulary(vocab.path)
  assert vocab != seqio.ByteVocabulary()
