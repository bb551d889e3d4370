"""Backbones: the abstract backbone matches the built one without making weights."""
import jax
import pytest

from ptuning_jax import backbones
from ptuning_jax.training import partitioning
from ptuning_jax import testing


@pytest.mark.parametrize("fsdp", [False, True])
def test_abstract_backbone_has_the_built_shapes_dtypes_and_shardings(fsdp):
  config = testing.tiny_config(param_dtype="bfloat16")
  mesh = partitioning.make_mesh(2, 4, devices=jax.devices()[:8])
  rules = partitioning.standard_logical_axis_rules(fsdp=fsdp)
  built = backbones.load(backbones.BackboneSpec(config=config, seed=0), mesh, rules)
  shell = backbones.abstract(config, mesh, rules)
  leaves = jax.tree_util.tree_leaves(shell.params)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert (jax.tree_util.tree_structure(shell.params)
          == jax.tree_util.tree_structure(built.params))
  for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(built.params), leaves):
    name = jax.tree_util.keystr(path)
    assert (got.shape, got.dtype) == (want.shape, want.dtype), name
    assert got.sharding == want.sharding, name
  assert shell.config == built.config
