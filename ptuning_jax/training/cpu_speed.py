"""Process-level speed settings for the XLA CPU backend (same results).

`unroll_threefry()` is called by the command-line entry point (`cli.main`)
and by the benchmarks for their own process; library code never calls it,
so importing ptuning_jax changes nothing. Python users may call it once,
before their first jitted step.

Why. Every dropout mask is drawn with jax's default threefry2x32 PRNG. On
CPU, jax lowers threefry as a rolled `while` loop of 5 iterations (its GPU
and TPU lowering is the same arithmetic straight-line), so XLA cannot fuse
the hash with the mask's comparison and select: each iteration streams both
32-bit counter arrays through memory, and the loop control runs on the host
thread. Registering jax's own straight-line lowering for CPU as well gives
one fused elementwise kernel per mask: the same uint32 arithmetic in the
same order, so the same bits, the same masks and bit-identical runs
(`tests/training/cpu_speed_test.py` checks bits, masks and a dropout train
step). On the 2-core CPU, a [16, 12, 68, 68] attention-dropout mask took 7.1
ms rolled and 2.4 ms straight-line (one core); see the README's performance
section for the whole MiniLM step.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def unroll_threefry() -> bool:
  """Lowers threefry2x32 on CPU straight-line instead of as a rolled loop.

  Affects only computations traced after the call; idempotent.

  Returns:
    True if the lowering is registered; False (logged) where this jax
    version lacks the private functions it uses (then nothing changes).
  """
  try:
    # pylint: disable=g-import-not-at-top
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32 as threefry
    primitive = threefry.threefry2x32_p
    straight_line = threefry._threefry2x32_lowering_rule  # pylint: disable=protected-access
  except (ImportError, AttributeError) as e:
    log.warning("cpu_speed.unroll_threefry: this jax has no %s; dropout masks keep "
                "jax's rolled CPU lowering (same bits, slower).", e)
    return False
  mlir.register_lowering(primitive, straight_line, platform="cpu")
  return True
