"""Tests of ptuning_jax.training.partitioning on the T5 parameter specs (8 CPU devices)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ptuning_jax.training import partitioning
from ptuning_jax.backbones import t5
from ptuning_jax import testing

# Sharding needs "model"-split dims divisible by 4: vocab, heads, d_ff.
SHARDABLE = testing.tiny_config(vocab_size=104, num_heads=4, d_ff=24)


@functools.lru_cache(maxsize=None)
def _specs(config):
  dummy = jnp.ones((1, 1), jnp.int32)
  boxed = jax.eval_shape(lambda: t5.T5(config).init(jax.random.PRNGKey(0), dummy, dummy))
  return nn.get_partition_spec(boxed)["params"]


@pytest.mark.parametrize("config", [
    testing.tiny_config(), testing.tiny_config(feed_forward="relu", tie_word_embeddings=True),
    t5.get_config("xxl"), t5.mt5_config("small")], ids=["tiny", "tied_relu", "xxl", "mt5"])
@pytest.mark.parametrize("fsdp", [False, True])
def test_every_t5_param_axis_is_covered(config, fsdp):
  rules = partitioning.standard_logical_axis_rules(fsdp=fsdp)
  assert partitioning.uncovered_axes(_specs(config), rules) == set()
  partitioning.check_rules_cover(_specs(config), rules)


def test_uncovered_axis_is_reported():
  rules = [r for r in partitioning.standard_logical_axis_rules() if r[0] != "relpos_buckets"]
  assert partitioning.uncovered_axes(_specs(testing.tiny_config()), rules) == {"relpos_buckets"}
  with pytest.raises(ValueError, match="relpos_buckets"):
    partitioning.mesh_shardings(_specs(testing.tiny_config()), partitioning.make_mesh(8, 1),
                                rules)


def test_make_mesh_shapes_and_errors():
  assert partitioning.make_mesh(8, 1).shape == {"data": 8, "model": 1}
  assert partitioning.make_mesh(2, 4).shape == {"data": 2, "model": 4}
  assert partitioning.make_mesh(-1, 2).shape == {"data": 4, "model": 2}
  assert partitioning.make_mesh().shape == {"data": 8, "model": 1}
  assert partitioning.make_mesh(2, 1, devices=jax.devices()[:2]).shape == {"data": 2, "model": 1}
  # A single process may use its first devices only; never more than it has.
  assert partitioning.make_mesh(3, 2).shape == {"data": 3, "model": 2}
  assert partitioning.make_mesh(3, 2).devices.ravel().tolist() == jax.devices()[:6]
  with pytest.raises(ValueError, match="needs 16 devices; 8 are available"):
    partitioning.make_mesh(8, 2)
  with pytest.raises(ValueError, match="not divisible by model=3"):
    partitioning.make_mesh(-1, 3)


@pytest.mark.parametrize("fsdp", [False, True])
def test_mesh_shardings_of_t5_specs(fsdp):
  mesh = partitioning.make_mesh(2, 4)
  shardings = partitioning.mesh_shardings(
      _specs(SHARDABLE), mesh, partitioning.standard_logical_axis_rules(fsdp=fsdp))
  embed = "data" if fsdp else None
  layer = shardings["encoder"]["layers_0"]
  assert shardings["token_embedder"]["embedding"].spec == P("model", embed)
  assert shardings["logits_dense"]["kernel"].spec == P(embed, "model")
  assert layer["attention"]["query"]["kernel"].spec == P(embed, "model", None)
  assert layer["attention"]["out"]["kernel"].spec == P("model", None, embed)
  assert layer["mlp"]["wi_0"]["kernel"].spec == P(embed, "model")
  assert layer["mlp"]["wo"]["kernel"].spec == P("model", embed)
  assert layer["pre_mlp_layer_norm"]["scale"].spec == P(embed)
  assert shardings["decoder"]["relpos_bias"]["rel_embedding"].spec == P(None, "model")
  assert all(s.mesh == mesh for s in jax.tree_util.tree_leaves(shardings))


@pytest.mark.parametrize("shape,fsdp", [((8, 1), False), ((2, 4), False), ((2, 4), True)])
def test_sharded_forward_equals_unsharded(shape, fsdp):
  config = SHARDABLE
  model = t5.T5(config)
  params = testing.init_params(config, seed=1)
  rng = np.random.RandomState(0)
  enc = rng.randint(2, config.vocab_size, size=(8, 7))
  enc[::3, 4:] = 0
  dec = rng.randint(2, config.vocab_size, size=(8, 5))
  dec[:, 0] = 0
  enc, dec = jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32)
  forward = lambda p, e, d: model.apply({"params": p}, e, d)
  want = jax.jit(forward)(params, enc, dec)
  mesh = partitioning.make_mesh(*shape)
  rules = partitioning.standard_logical_axis_rules(fsdp=fsdp)
  shardings = partitioning.mesh_shardings(_specs(config), mesh, rules)
  sharded = jax.device_put(params, shardings)
  batch = partitioning.data_sharding(mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
    got = jax.jit(forward)(sharded, jax.device_put(enc, batch), jax.device_put(dec, batch))
  assert got.sharding.spec[0] == "data"
  if shape[1] > 1:  # logits are vocab-sharded over "model"
    assert got.sharding.spec[2] == "model"
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
