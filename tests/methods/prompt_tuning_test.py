"""Soft prompt initialisers, placements and the SoftPrompt module."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptuning_jax.backbones import t5
from ptuning_jax.methods import initializers
from ptuning_jax.methods import placements
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.data import vocab as vocab_lib

V, H, P = 300, 6, 5


@pytest.fixture
def context():
  table = np.random.default_rng(0).normal(size=(V, H)).astype(np.float32)
  return initializers.InitContext(embedding=table, vocab=vocab_lib.ByteVocab())


def test_random_uniform_range(context):
  x = initializers.random_uniform()(jax.random.key(0), (50, H), context)
  assert x.shape == (50, H)
  assert float(x.min()) >= 0.0 and float(x.max()) < 0.5
  assert float(x.std()) > 0.1


def test_normal_stddev(context):
  x = np.asarray(initializers.normal(2.0)(jax.random.key(0), (400, H), context))
  assert abs(x.std() - 2.0) < 0.1


def test_sampled_vocab_rows_come_from_population(context):
  x = np.asarray(initializers.sampled_vocab(population_size=20)(
      jax.random.key(1), (P, H), context))
  table = context.embedding
  rows = [int(np.where((table == r).all(1))[0][0]) for r in x]
  assert all(r < 20 for r in rows)
  assert len(set(rows)) == P  # without replacement


def test_class_labels_average_pieces(context):
  labels = ["yes", "no"]
  x = np.asarray(initializers.class_labels(labels)(jax.random.key(0), (P, H), context))
  v = context.vocab
  for i, label in enumerate(labels):
    expected = context.embedding[np.asarray(v.encode(label))].mean(0)
    np.testing.assert_allclose(x[i], expected, rtol=0, atol=1e-6)
  assert x.shape == (P, H)


def test_class_labels_too_many_labels(context):
  with pytest.raises(ValueError, match="do not fit"):
    initializers.class_labels(list("abcdefg"))(jax.random.key(0), (P, H), context)


def test_text_init(context):
  x = np.asarray(initializers.text("hi")(jax.random.key(0), (P, H), context))
  ids = context.vocab.encode("hi")
  np.testing.assert_array_equal(x[:len(ids)], context.embedding[np.asarray(ids)])
  with pytest.raises(ValueError, match="more than the prompt length"):
    initializers.text("too long a text")(jax.random.key(0), (P, H), context)


def test_vocab_inits_need_embedding():
  with pytest.raises(ValueError, match="embedding table"):
    initializers.sampled_vocab()(jax.random.key(0), (P, H), initializers.InitContext())


def test_from_file_roundtrip_and_errors(tmp_path, context):
  value = np.random.default_rng(3).normal(size=(P, H)).astype(np.float32)
  np.save(tmp_path / "p.npy", value)
  x = initializers.from_file(str(tmp_path / "p.npy"))(jax.random.key(0), (P, H), context)
  np.testing.assert_array_equal(np.asarray(x), value)
  with pytest.raises(ValueError, match=r"holds shape \(5, 6\)"):
    initializers.from_file(str(tmp_path / "p.npy"))(jax.random.key(0), (P + 1, H), context)
  with pytest.raises(FileNotFoundError, match="missing.npy"):
    initializers.from_file(str(tmp_path / "missing.npy"))(jax.random.key(0), (P, H), context)


def _inputs():
  x = jnp.arange(2 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 2) + 1  # [B, T, H]
  mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]], jnp.int32)
  prompt = -jnp.ones((2, 3, 2)) * jnp.arange(1, 4)[None, :, None]  # [B, P, H]
  return prompt, x, mask


def test_prefix_placement():
  prompt, x, mask = _inputs()
  out, out_mask = placements.prefix(prompt, x, None, mask)
  assert out.shape == (2, 7, 2)
  np.testing.assert_array_equal(out[:, :3], prompt)
  np.testing.assert_array_equal(out[:, 3:], x)
  np.testing.assert_array_equal(out_mask, [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])


def test_prefix_after_bos_placement():
  prompt, x, mask = _inputs()
  out, out_mask = placements.prefix_after_bos(prompt, x, None, mask)
  np.testing.assert_array_equal(out[:, 0], x[:, 0])
  np.testing.assert_array_equal(out[:, 1:4], prompt)
  np.testing.assert_array_equal(out[:, 4:], x[:, 1:])
  np.testing.assert_array_equal(out_mask, [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])


def test_suffix_placement_after_each_examples_end():
  prompt, x, mask = _inputs()
  out, out_mask = placements.suffix(prompt, x, None, mask)
  out = np.asarray(out)
  # Example 0 has 3 real tokens, example 1 has 2.
  np.testing.assert_array_equal(out[0, :3], x[0, :3])
  np.testing.assert_array_equal(out[0, 3:6], prompt[0])
  np.testing.assert_array_equal(out[0, 6:], 0)
  np.testing.assert_array_equal(out[1, :2], x[1, :2])
  np.testing.assert_array_equal(out[1, 2:5], prompt[1])
  np.testing.assert_array_equal(out[1, 5:], 0)
  np.testing.assert_array_equal(out_mask, [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])


def test_unknown_placement():
  with pytest.raises(ValueError, match="placement 'middle'"):
    placements.get_placement("middle")


def test_soft_prompt_module_hooks_and_axes(context):
  spec = t5.hook_spec(t5.get_config("tiny", d_model=H, vocab_size=V))
  module = prompt_tuning.SoftPrompt(spec=spec, length=P, decoder_length=2,
                              initializer=initializers.sampled_vocab(50))
  variables = module.init(jax.random.key(0), 1, context)
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["prompt"]) == ("prompt", "prompt_embed")
  assert tuple(specs["decoder_prompt"]) == ("prompt", "prompt_embed")
  params = nn.meta.unbox(variables)["params"]
  assert params["prompt"].shape == (P, H)
  hk = module.apply({"params": params}, 3)
  assert set(hk.prefix) == {"decoder"} and set(hk.inputs) == {"encoder"}
  assert hk.prefix["decoder"].shape == (3, 2, H)
  x = jnp.zeros((3, 4, H))
  mask = jnp.ones((3, 4), jnp.int32)
  out, out_mask = hk.inputs["encoder"](x, jnp.ones((3, 4), jnp.int32), mask)
  assert out.shape == (3, P + 4, H) and out_mask.shape == (3, P + 4)
  np.testing.assert_array_equal(out[1, :P], params["prompt"])
