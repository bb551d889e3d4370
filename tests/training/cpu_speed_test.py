"""`cpu_speed.unroll_threefry`: a straight-line threefry lowering on CPU that
draws the same bits, masks and dropout training steps as jax's rolled one.

Run in a fresh interpreter: the registration is process-wide and cannot be
undone, and the comparison needs results from before and after it.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from ptuning_jax.training import cpu_speed

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import flax.linen as nn
    from ptuning_jax.backbones import bert
    from ptuning_jax.training import cpu_speed

    cfg = bert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=24,
                          max_position_embeddings=16)
    model = bert.BertEncoder(cfg)
    params = bert.init_params(cfg, seed=0)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 50, (3, 9)), jnp.int32)
    mask = jnp.ones_like(ids)

    def results():
      # Fresh functions each time, so each call traces and lowers anew.
      key = jax.random.key(7)
      bits = jax.jit(lambda k: jax.random.bits(k, (4, 1001)))(key)
      drop = jax.jit(lambda k, x: nn.Dropout(0.3).apply(
          {}, x, deterministic=False, rngs={"dropout": k}))(key, jnp.ones((5, 333)))
      def loss(p):
        h = model.apply({"params": p}, ids, mask, deterministic=False,
                        rngs={"dropout": key})
        return jnp.sum(h ** 2)
      value, grads = jax.jit(jax.value_and_grad(loss))(params)
      text = jax.jit(lambda k: jax.random.bits(k, (64,))).lower(key).as_text()
      return ([np.asarray(bits), np.asarray(drop), np.asarray(value)]
              + [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)], text)

    before, text_before = results()
    registered = cpu_speed.unroll_threefry()
    again = cpu_speed.unroll_threefry()
    after, text_after = results()
    print(json.dumps({
        "registered": registered and again,
        "same": [bool(np.array_equal(a, b)) for a, b in zip(before, after)],
        "count": len(before),
        "loop_before": "while" in text_before, "loop_after": "while" in text_after,
        "dropped": float(np.mean(before[1] == 0)),
    }))
""")


def test_unroll_threefry_keeps_bits_masks_and_dropout_steps():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                        env=env, check=False, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["registered"]
  # The lowering did change: jax's CPU rule is a rolled loop, ours is not.
  assert result["loop_before"] and not result["loop_after"]
  # ... and every bit, mask, loss and gradient is identical.
  assert result["count"] > 10 and all(result["same"]), result["same"]
  assert 0.2 < result["dropped"] < 0.4  # the masks are real dropout masks


def test_unroll_threefry_without_the_private_api_changes_nothing(monkeypatch, caplog):
  import jax._src.random.threefry2x32 as threefry  # pylint: disable=g-import-not-at-top
  monkeypatch.delattr(threefry, "_threefry2x32_lowering_rule")
  with caplog.at_level("WARNING"):
    assert cpu_speed.unroll_threefry() is False
  assert "rolled CPU lowering" in caplog.text


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q"]))
