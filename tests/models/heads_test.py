"""heads: the classifier head against transformers' sequence classification,
mean-pooled regression, label-word (verbalizer) scoring against the MLM head.

Dimension letters: B batch, T length, H hidden, C classes.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptuning_jax.backbones import bert
from ptuning_jax.backbones.hf import bert as hf_bert
from ptuning_jax import testing
from ptuning_jax.models import heads

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _load(path):
  return hf_bert.load_checkpoint(path)


_batch = testing.padded_ids


def _tiny_inputs(seed=7):
  ids, mask = _batch(89, [8, 5, 3], 8, pad_id=0, seed=seed)
  return ids, mask, np.random.default_rng(seed).integers(0, 3, ids.shape)


def test_classification_head_matches_hf_sequence_classification(tiny_bert):
  path, _ = tiny_bert
  hf = transformers.BertForSequenceClassification.from_pretrained(
      str(path), num_labels=3, attn_implementation="eager").eval()
  config, params = _load(path)
  ids, mask, types = _tiny_inputs(seed=11)
  with torch.no_grad():
    expected = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  token_type_ids=torch.tensor(types)).logits.numpy()
  model = bert.BertEncoder(config)
  hidden, out_mask = model.apply({"params": params}, ids, mask, types,
                                 method=bert.BertEncoder.encode)
  head = heads.ClassificationHead(3, pooling="cls", use_pooler=True)
  head_params = {"dense": {"kernel": jnp.asarray(hf.classifier.weight.detach().numpy().T),
                           "bias": jnp.asarray(hf.classifier.bias.detach().numpy())}}
  logits = head.apply({"params": head_params}, hidden, out_mask,
                      pooler=bert.pooler_fn(model, params))
  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="needs the backbone's pooler"):
    head.apply({"params": head_params}, hidden, out_mask)


def test_mean_pooling_regression_head():
  rng = np.random.default_rng(12)
  hidden = rng.normal(size=(2, 4, 6)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
  head = heads.ClassificationHead(1, pooling="mean", dropout_rate=0.0)
  variables = head.init(jax.random.key(0), hidden, mask)
  out = head.apply(variables, hidden, mask)
  p = nn.meta.unbox(variables["params"])["dense"]
  mean = np.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])
  np.testing.assert_allclose(out, mean @ np.asarray(p["kernel"]) + np.asarray(p["bias"]),
                             atol=1e-5, rtol=0)
  assert out.shape == (2, 1)
  with pytest.raises(ValueError, match="Unknown pooling 'max'"):
    heads.ClassificationHead(2, pooling="max").init(jax.random.key(0), hidden, mask)


def test_verbalizer_head_scores_label_words_at_the_mask(tiny_roberta):
  path, hf_model = tiny_roberta
  config, params = _load(path)
  ids, mask = _batch(97, [9, 6], 9, pad_id=1, seed=13)
  ids[0, 4], ids[1, 2] = 5, 5  # 5 plays the mask token
  positions = heads.mask_positions(ids, 5)
  np.testing.assert_array_equal(positions, [4, 2])
  model = bert.BertEncoder(config)
  hidden = model.apply({"params": params}, ids, mask)
  head = heads.VerbalizerHead(label_token_ids=(10, 20, 30))
  scores = head.apply({}, hidden, jnp.asarray(positions), mlm=bert.mlm_fn(model, params))
  with torch.no_grad():
    logits = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  expected = logits.numpy()[[0, 1], positions][:, [10, 20, 30]]
  np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)
  ids[1, 2] = 7
  with pytest.raises(ValueError, match=r"Rows \[1\] have \[0\] mask tokens"):
    heads.mask_positions(ids, 5)
  with pytest.raises(ValueError, match="repeat an id"):
    heads.VerbalizerHead((3, 3)).apply({}, hidden, jnp.asarray(positions),
                                      mlm=bert.mlm_fn(model, params))
