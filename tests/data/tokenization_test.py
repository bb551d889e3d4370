"""tokenization.HFTokenizer: the same ids as transformers' fast tokenizer on
real sentences (all-MiniLM-L6-v2's WordPiece) and on a RoBERTa-style
template; truncation; special tokens.
"""
import csv
import random

import pytest

from ptuning_jax.backbones.hf import bert as hf_bert
from ptuning_jax.data import tokenization

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SENTENCES = [
    "The movie was great!",
    "I did not like it at all.",
    "Antidisestablishmentarianism is a long word.",
    "She said: \"Don't go there\" -- and left.",
    "Café au lait costs 3.50 euros in Paris.",
    "Numbers like 1,234,567 and dates like 2021-05-04 appear too.",
    "日本語のテキストも少し。",
    "He reads books about naïve physics every evening.",
    "",
]


@pytest.fixture(scope="module")
def minilm_dir():
  try:
    return hf_bert.all_minilm_l6_v2_dir()
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def ours(minilm_dir):
  return tokenization.HFTokenizer(minilm_dir)


@pytest.fixture(scope="module")
def theirs(minilm_dir):
  return transformers.AutoTokenizer.from_pretrained(str(minilm_dir))


def _check_same_ids(ours, theirs, sentences):
  for text in sentences:
    expected = theirs(text)
    assert ours.encode_pair(text) == (expected["input_ids"], expected["token_type_ids"])
    assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
  for a, b in zip(sentences, reversed(sentences)):
    expected = theirs(a, b)
    assert ours.encode_pair(a, b) == (expected["input_ids"], expected["token_type_ids"])


def test_ids_equal_transformers_on_builtin_sentences(ours, theirs):
  _check_same_ids(ours, theirs, SENTENCES)


def test_ids_equal_transformers_on_sst2_sentences(ours, theirs, shared_data):
  with open(shared_data / "glue" / "sst2" / "dev.tsv") as f:
    rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  _check_same_ids(ours, theirs, [r["sentence"] for r in rows[:64]])


def test_longest_first_truncation_equals_transformers(ours, theirs):
  rng = random.Random(0)
  words = "the cat sat on a mat , while UNUSUAL antidisestablishmentarianism !".split()
  for _ in range(150):
    a = " ".join(rng.choices(words, k=rng.randint(1, 20)))
    b = " ".join(rng.choices(words, k=rng.randint(0, 20)))
    max_length = rng.randint(3, 30)
    expected = theirs(a, b, truncation=True, max_length=max_length)
    got = ours.encode_pair(a, b, max_length=max_length)
    assert got == (expected["input_ids"], expected["token_type_ids"]), (a, b, max_length)
    assert len(got[0]) <= max_length
    single = theirs(a, truncation=True, max_length=max_length)["input_ids"]
    assert ours.encode_pair(a, max_length=max_length)[0] == single
  with pytest.raises(ValueError, match="no room for the 3 special tokens"):
    ours.encode_pair("a", "b", max_length=2)


def test_longest_first_lengths():
  assert tokenization.longest_first_lengths(3, 4, 10) == (3, 4)
  assert tokenization.longest_first_lengths(3, 20, 10) == (3, 7)
  assert tokenization.longest_first_lengths(20, 3, 10) == (7, 3)
  assert tokenization.longest_first_lengths(8, 9, 11) == (5, 6)
  assert tokenization.longest_first_lengths(9, 8, 11) == (6, 5)


def test_no_implicit_truncation_or_padding(ours, theirs):
  # This tokenizer.json stores max_length 128 and fixed padding to 128.
  text = "word " * 300
  assert len(ours.encode_pair(text)[0]) == len(theirs(text)["input_ids"]) == 302
  assert len(ours.encode_pair("short")[0]) == 3


def test_special_ids_and_vocab_size(ours, theirs):
  assert (ours.cls_id, ours.sep_id, ours.pad_id, ours.mask_id, ours.unk_id) == (
      theirs.cls_token_id, theirs.sep_token_id, theirs.pad_token_id,
      theirs.mask_token_id, theirs.unk_token_id)
  assert ours.vocab_size == len(theirs) == 30522
  assert ours.token_to_id("great") == theirs.convert_tokens_to_ids("great")
  with pytest.raises(ValueError, match="'notatoken!' is not an entry"):
    ours.token_to_id("notatoken!")
  assert ours.num_special_tokens() == 2 and ours.num_special_tokens(pair=True) == 3


def test_decode_drops_special_tokens_and_padding(ours, theirs):
  ids, _ = ours.encode_pair("Hello, World!", "Again.")
  ids = ids + [ours.pad_id] * 3
  assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True) == (
      "hello, world! again.")
  assert ours.decode(ids, skip_special_tokens=False).startswith("[CLS] hello")
  assert ours.encode_batch(["a b", "c"]) == [ours.encode("a b"), ours.encode("c")]


@pytest.fixture(scope="module")
def roberta_style(tmp_path_factory):
  """A word-level tokenizer with RoBERTa's template and special spellings."""
  words = ["<s>", "<pad>", "</s>", "<unk>", "hello", "world", "again", "!", "<mask>"]
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.post_processor = tokenizers.processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
  tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  path = tmp_path_factory.mktemp("roberta_tok") / "tokenizer.json"
  tok.save(str(path))
  return path


def test_roberta_template_and_specials(roberta_style):
  ours = tokenization.HFTokenizer(roberta_style)
  theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(roberta_style))
  assert (ours.cls_id, ours.sep_id, ours.pad_id, ours.unk_id, ours.mask_id) == (
      0, 2, 1, 3, 8)
  ids, types = ours.encode_pair("hello world", "again !")
  assert ids == theirs("hello world", "again !")["input_ids"] == [0, 4, 5, 2, 2, 6, 7, 2]
  assert types == [0] * 8
  assert ours.encode("hello nope") == [4, 3]


def test_missing_files_and_tokens_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json does not exist"):
    tokenization.HFTokenizer(tmp_path)
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "<unk>": 1},
                                                         unk_token="<unk>"))
  tok.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(ValueError, match=r"none of the cls tokens \['\[CLS\]', '<s>'\]"):
    tokenization.HFTokenizer(tmp_path)
