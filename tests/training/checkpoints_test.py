"""Tests for ptuning_jax.training.checkpoints.

Dimension letters: P prompt length, H d_model.
"""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ptuning_jax.training import checkpoints
from ptuning_jax.training import optimizers

P, H = 4, 8


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict
  opt_state: dict
  rng: jax.Array
  key: jax.Array


def _state(seed: int = 0, step: int = 0) -> _State:
  rng = np.random.default_rng(seed)
  params = {
      "encoder": {"prompt": jnp.asarray(rng.normal(size=(P, H)), jnp.float32)},
      "head": {"kernel": jnp.asarray(rng.normal(size=(H, 2)), jnp.bfloat16)},
  }
  tx = optimizers.adafactor()
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda x: jnp.ones_like(x) * 0.5, params)
  _, opt_state = tx.update(grads, opt_state, params)  # non-zero moments
  return _State(step=jnp.asarray(step, jnp.int32), params=params,
                opt_state=opt_state,
                rng=jax.random.key_data(jax.random.key(seed + 11)),
                key=jax.random.key(seed + 1))


def _assert_identical(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      assert jnp.issubdtype(y.dtype, jax.dtypes.prng_key)
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.atleast_1d(np.asarray(x)).view(np.uint8),
                                  np.atleast_1d(np.asarray(y)).view(np.uint8))


def test_round_trip_bit_identical(tmp_path):
  state = _state(0, step=7)
  data = {"position": 123, "epoch": 1, "files": ["a", "b"]}
  with checkpoints.Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(7, state, data, metrics={"loss": jnp.asarray(0.5)})
    assert not ckpt.save(7, state, data)  # already saved: skipped
    ckpt.wait()
    assert (tmp_path / "ckpt" / "7" / "state").is_dir()
    assert ckpt.latest_step() == 7
    target = _state(1)  # different values, same structure
    restored, restored_data = ckpt.restore(target_state=target)
  _assert_identical(restored, state)
  assert restored.params["head"]["kernel"].dtype == jnp.bfloat16
  assert restored_data == data
  # A new Checkpointer on the same directory sees the step.
  with checkpoints.Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.all_steps() == [7]
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        target)
    restored, _ = ckpt.restore(7, abstract)  # positional target works too
    assert ckpt.metrics(7) == {"loss": 0.5}
  _assert_identical(restored, state)


def test_keep_n_deletes_old_steps(tmp_path):
  state = _state()
  with checkpoints.Checkpointer(tmp_path, keep=2, export_npy=False) as ckpt:
    for step in (1, 2, 3, 4):
      ckpt.save(step, state, {"position": step})
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == [
      "3", "4"]


def test_keep_best(tmp_path):
  state = _state()
  accuracy = {1: 0.5, 2: 0.9, 3: 0.7, 4: None, 5: 0.6}
  with checkpoints.Checkpointer(tmp_path, keep=1, keep_best="accuracy",
                                export_npy=False) as ckpt:
    for step, acc in accuracy.items():
      ckpt.save(step, state, {}, None if acc is None else {"accuracy": acc})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 5]
    assert ckpt.best_step() == 2
  with checkpoints.Checkpointer(tmp_path / "min", keep=1, keep_best="loss",
                                best_mode="min", export_npy=False) as ckpt:
    for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0)):
      ckpt.save(step, state, {}, {"loss": loss})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3] and ckpt.best_step() == 2
  with checkpoints.Checkpointer(tmp_path / "none", export_npy=False) as ckpt:
    with pytest.raises(ValueError, match="keep_best"):
      ckpt.best_step()


def test_npy_export_reloads_identically(tmp_path):
  state = _state(3)
  with checkpoints.Checkpointer(tmp_path, keep=1) as ckpt:
    ckpt.save(10, state, {})
    ckpt.save(20, _state(4), {})
    ckpt.wait()
    assert ckpt.all_steps() == [20]
    # Exports survive retention.
    npy = ckpt.npy_dir(10)
  assert npy == tmp_path / "numpy" / "10"
  assert sorted(p.name for p in npy.iterdir()) == [
      "encoder.prompt.npy", "head.kernel.npy"]
  prompt = checkpoints.load_npy(npy / "encoder.prompt.npy")
  assert prompt.dtype == np.float32 and prompt.shape == (P, H)
  np.testing.assert_array_equal(prompt,
                                np.asarray(state.params["encoder"]["prompt"]))
  kernel = checkpoints.load_npy(npy / "head.kernel.npy", dtype=jnp.bfloat16)
  np.testing.assert_array_equal(
      kernel.view(np.uint16),
      np.asarray(state.params["head"]["kernel"]).view(np.uint16))
  with pytest.raises(FileNotFoundError, match="encoder.prompt.npy"):
    checkpoints.load_npy(npy / "missing.npy")


def test_npy_patterns_and_dict_state(tmp_path):
  state = _state()
  state = {"params": state.params, "step": state.step}
  with checkpoints.Checkpointer(tmp_path, npy_patterns=("prompt",)) as ckpt:
    ckpt.save(1, state, {})
    assert [p.name for p in ckpt.npy_dir(1).iterdir()] == ["encoder.prompt.npy"]
  with checkpoints.Checkpointer(tmp_path / "b",
                                npy_subtree="trainables") as ckpt:
    with pytest.raises(ValueError, match="'trainables'.*params"):
      ckpt.save(1, state, {})


def test_restore_onto_sharded_target(tmp_path):
  mesh = Mesh(np.asarray(jax.devices()).reshape(8, 1), ("data", "model"))
  state = {"prompt": jnp.arange(8 * H, dtype=jnp.float32).reshape(8, H),
           "step": jnp.asarray(3, jnp.int32)}
  sharded = NamedSharding(mesh, PartitionSpec("data", None))
  replicated = NamedSharding(mesh, PartitionSpec())
  target = {"prompt": jax.ShapeDtypeStruct((8, H), jnp.float32,
                                           sharding=sharded),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)}
  with checkpoints.Checkpointer(tmp_path, export_npy=False) as ckpt:
    ckpt.save(3, state, {})
    ckpt.wait()
    restored, _ = ckpt.restore(3, target_state=target)
    assert restored["prompt"].sharding == sharded
    assert len(restored["prompt"].addressable_shards) == 8
    assert restored["prompt"].addressable_shards[1].data.shape == (1, H)
    assert restored["step"].sharding == replicated
    np.testing.assert_array_equal(restored["prompt"], state["prompt"])
    # A concrete sharded array as target works the same way.
    placed = jax.device_put(jnp.zeros((8, H)), sharded)
    restored, _ = ckpt.restore(3, target_state=dict(state, prompt=placed))
    assert restored["prompt"].sharding == sharded


def test_errors(tmp_path):
  state = {"params": {"w": jnp.ones(3)}}
  with checkpoints.Checkpointer(tmp_path, keep=None) as ckpt:
    with pytest.raises(FileNotFoundError,
                       match=r"step None.*available steps: \[\]"):
      ckpt.restore(target_state=state)
    ckpt.save(1, state, {})
    ckpt.save(2, state, {})
    ckpt.wait()
    with pytest.raises(FileNotFoundError,
                       match=rf"step 5 in {tmp_path}.*\[1, 2\]"):
      ckpt.restore(5, target_state=state)
    with pytest.raises(ValueError, match="ShapeDtypeStruct without a sharding"):
      ckpt.restore(2, target_state={"params": {"w": jax.ShapeDtypeStruct(
          (3,), jnp.float32)}})
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
      ckpt.restore(2, target_state={"params": {"w": jnp.ones(4)}})
    with pytest.raises(ValueError, match="already exists"):
      ckpt.save(2, state, {}, force=True)
    with pytest.raises(ValueError, match="'acc' has shape"):
      ckpt.save(3, state, {}, metrics={"acc": np.ones(2)})
    with pytest.raises(TypeError, match="data_state.*int64"):
      ckpt.save(3, state, {"position": np.int64(3)})
    with pytest.raises(ValueError, match="target_state"):
      ckpt.restore(2)
  with pytest.raises(ValueError, match="best_mode"):
    checkpoints.Checkpointer(tmp_path, best_mode="best")


def test_async_save_survives_donated_arrays(tmp_path):
  # The trainer donates the state to the next step right after `save`.
  prompt = jnp.arange(P * H, dtype=jnp.float32).reshape(P, H)  # [P, H]
  state = {"params": {"prompt": prompt}}
  expected = np.asarray(state["params"]["prompt"]).copy()
  with checkpoints.Checkpointer(tmp_path, export_npy=False) as ckpt:
    ckpt.save(1, state, {})
    state["params"]["prompt"].delete()
    ckpt.wait()
    target = {"params": {"prompt": jnp.zeros((P, H))}}
    restored, _ = ckpt.restore(1, target_state=target)
  np.testing.assert_array_equal(restored["params"]["prompt"], expected)
