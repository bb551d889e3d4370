"""XPrompt's rounds as runs: prompt tuning, then prune / rewind / retrain.

`run_rounds` (the `ptuning-jax xprompt` command) trains round 0 from the
initial prompt P0, then per round scores the previous round's prompt
(`importance_scores`), prunes tokens or pieces (`prune_tokens`,
`prune_pieces`), rewinds and retrains with the masks; see `methods.xprompt`
for the method and the paper's settings.

Dimension letters: B batch, P prompt length, k pieces per token.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ptuning_jax.methods import common
from ptuning_jax.methods import initializers
from ptuning_jax.methods.xprompt import PIECE_MASK
from ptuning_jax.methods.xprompt import TOKEN_MASK
from ptuning_jax.methods.xprompt import masked_prompt
from ptuning_jax.methods.xprompt import surviving_params
from ptuning_jax.models import task_model
from ptuning_jax.training import checkpoints
from ptuning_jax.training import files
from ptuning_jax.training import optimizers
from ptuning_jax.training import partitioning

Array = jax.Array
log = logging.getLogger(__name__)

INITIAL_PROMPT = "initial_prompt.npy"
FINAL_PROMPT = "xprompt_prompt.npy"
REPORT = "xprompt_report.json"
REWIND_TARGETS = ("initial", "trained")


# ------------------------------ importance ----------------------------------


def score_fn(model: task_model.TaskModel, params: Any, frozen: Any,
             batch: Mapping[str, Array]) -> tuple[Array, Array]:
  """Summed |d loss / d mask| over the batch's examples.

  Returns:
    (token scores [P], piece scores [P, k]).
  """
  token, piece = model.method.masks()
  size = jax.tree_util.tree_leaves(batch)[0].shape[0]
  ones = (jnp.ones((size,) + token.shape), jnp.ones((size,) + piece.shape))

  def loss(masks):
    features = dict(batch, **{TOKEN_MASK: masks[0], PIECE_MASK: masks[1]})
    return model.loss_fn(params, frozen, features, None, True)[0]
  grad_token, grad_piece = jax.grad(loss)(ones)  # [B, P], [B, P, k]
  return jnp.abs(grad_token).sum(0), jnp.abs(grad_piece).sum(0)


def importance_scores(run: Any, params: Any, batches) -> tuple[np.ndarray,
                                                                         np.ndarray]:
  """Mean over `batches` of `score_fn` on the run's mesh (sharded batches).

  Args:
    run: a `run.build_run` result whose method is an `XPrompt`.
    params: the trained prompt parameters.
    batches: an iterable of host batches (numpy dicts).
  Returns:
    (token scores [P], piece scores [P, k]) float64, averaged over batches.
  """
  trainer = run.trainer
  fn = jax.jit(functools.partial(score_fn, run.model),
               in_shardings=(trainer.replicated, trainer.frozen_shardings,
                             trainer.batch_sharding),
               out_shardings=trainer.replicated)
  totals, count = None, 0
  with partitioning.activate(run.mesh, run.rules):
    for batch in batches:
      scores = jax.device_get(fn(params, run.frozen, trainer.place_batch(batch)))
      totals = scores if totals is None else tuple(a + b for a, b in zip(totals, scores))
      count += 1
  if not count:
    raise ValueError("XPrompt importance_scores: no batches to score.")
  return tuple(np.asarray(t, np.float64) / count for t in totals)


# ------------------------------ pruning -------------------------------------


def prune_tokens(scores: np.ndarray, token_mask: np.ndarray, fraction: float,
                 min_tokens: int = 1) -> np.ndarray:
  """Masks the floor(fraction x surviving) lowest-scored surviving tokens
  (ties: lower index first), keeping at least `min_tokens`. Returns [P]."""
  _check_fraction(fraction)
  mask = np.asarray(token_mask, np.float32).copy()
  alive = np.flatnonzero(mask)
  count = min(int(fraction * alive.size), max(alive.size - min_tokens, 0))
  order = alive[np.argsort(np.asarray(scores)[alive], kind="stable")]
  mask[order[:count]] = 0.0
  return mask


def prune_pieces(scores: np.ndarray, token_mask: np.ndarray, piece_mask: np.ndarray,
                 fraction: float, min_pieces: int = 1) -> np.ndarray:
  """In every surviving token, masks floor(fraction x its surviving pieces)
  lowest-scored pieces, keeping at least `min_pieces`. Returns [P, k]."""
  _check_fraction(fraction)
  mask = np.asarray(piece_mask, np.float32).copy()
  for i in np.flatnonzero(np.asarray(token_mask)):
    mask[i] = prune_tokens(np.asarray(scores)[i], mask[i], fraction, min_pieces)
  return mask


def _check_fraction(fraction: float) -> None:
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"XPrompt pruning fraction {fraction} must lie in [0, 1).")


@dataclasses.dataclass(frozen=True)
class PruningSchedule:
  """Which fraction to prune in each round after round 0.

  Attributes:
    token_fractions: one token-level round per entry: the fraction of the
      surviving tokens to mask.
    piece_fractions: then one piece-level round per entry: the fraction of
      each surviving token's surviving pieces to mask.
    min_tokens: tokens never pruned below this.
    min_pieces: pieces per surviving token never pruned below this.
  """
  token_fractions: Sequence[float] = (0.2, 0.2)
  piece_fractions: Sequence[float] = (0.25,)
  min_tokens: int = 1
  min_pieces: int = 1

  def rounds(self) -> list[tuple[str, float]]:
    out = [("token", f) for f in self.token_fractions]
    out += [("piece", f) for f in self.piece_fractions]
    for _, fraction in out:
      _check_fraction(fraction)
    return out


# ------------------------------ the driver ----------------------------------


def _method_factory(method: Callable[..., Any], initial: str, token_mask, piece_mask):
  """`method` with the rewound initial prompt and the round's masks."""
  as_tuple = lambda m: None if m is None else tuple(np.asarray(m).astype(int).tolist())
  piece = None if piece_mask is None else tuple(
      tuple(row) for row in np.asarray(piece_mask).astype(int).tolist())
  return functools.partial(method, initializer=initializers.from_file(initial),
                           token_mask=as_tuple(token_mask), piece_mask=piece)


def _initial_prompt(model_dir: str, method, train_kwargs: Mapping[str, Any]) -> str:
  """Writes P0, the method's initial prompt for the run's seed; returns its path."""
  path = os.path.join(model_dir, INITIAL_PROMPT)
  if os.path.exists(path):  # a resumed driver rewinds to the same P0
    return path
  run = _build(method, train_kwargs)
  np.save(path, np.asarray(jax.device_get(
      run.state.params[task_model.METHOD]["prompt"]), np.float32))
  return path


_BUILD_KEYS = ("backbone", "data", "optimizer", "mesh", "seed", "num_microbatches",
               "model")


def _build(method, train_kwargs) -> Any:
  """`run.build_run` with the run arguments among `train_kwargs`."""
  from ptuning_jax.training import run as run_lib  # pylint: disable=g-import-not-at-top
  kwargs = {k: v for k, v in train_kwargs.items() if k in _BUILD_KEYS}
  kwargs.setdefault("optimizer", optimizers.OptimizerConfig())
  return run_lib.build_run(method=method, **kwargs)


def _score(method, trained: str, train_kwargs, score_batches: int):
  run = _build(functools.partial(method, initializer=initializers.from_file(trained)),
               train_kwargs)
  iterator = run.data.train_iterator()
  batches = (next(iterator) for _ in range(score_batches))
  return importance_scores(run, run.state.params, batches)


def _survivors(token_mask: np.ndarray, piece_mask: np.ndarray) -> dict:
  kept = [int(i) for i in np.flatnonzero(token_mask)]
  return {"tokens": kept,
          "pieces": {str(i): [int(j) for j in np.flatnonzero(piece_mask[i])]
                     for i in kept}}


def run_rounds(*, model_dir: str, method: Callable[..., Any], num_steps: int,
               schedule: PruningSchedule = PruningSchedule(), score_batches: int = 4,
               rewind: str = "initial",
               train_fn: Optional[Callable[..., dict]] = None, **train_kwargs) -> dict:
  """XPrompt: prompt tuning, then prune / rewind / retrain rounds.

  Args:
    model_dir: output directory (one `round_<r>/` run each, the report, P0).
    method: an `XPrompt` factory (e.g. `functools.partial(xprompt.XPrompt, length=P)`
      or gin's `%METHOD`); the driver sets its initializer and masks.
    num_steps: training steps of every round.
    schedule: the pruning rounds.
    score_batches: training batches averaged for the importance scores.
    rewind: what every retraining round restarts from: "initial" (P0, the
      values before any training: lottery-ticket rewinding, the default) or
      "trained" (round 0's trained prompt, i.e. rewinding to the result of
      prompt tuning).
    train_fn: `run.train` (default) or a wrapper of it.
    **train_kwargs: the rest of `run.train`'s arguments (backbone, data,
      optimizer, mesh, seed, eval_every, ...).
  Returns:
    the report (also written to `<model_dir>/xprompt_report.json`).
  """
  if train_fn is None:
    from ptuning_jax.training import run as run_lib  # pylint: disable=g-import-not-at-top
    train_fn = run_lib.train
  common.check_choice("run_rounds", "rewind", rewind, REWIND_TARGETS)
  os.makedirs(model_dir, exist_ok=True)
  probe = method(spec=None)
  token, piece = probe.masks()
  initial = _initial_prompt(model_dir, method, train_kwargs)
  report = {"initial_prompt": initial, "length": probe.length,
            "num_pieces": probe.num_pieces, "rewind": rewind, "rounds": []}
  start = initial  # what the next round trains from
  for r, (level, fraction) in enumerate([("none", 0.0)] + schedule.rounds()):
    scores = None
    if r:
      previous = os.path.join(report["rounds"][-1]["export"], "prompt.npy")
      if r == 1 and rewind == "trained":
        start = previous
      scores = _score(_method_factory(method, initial, token, piece), previous,
                      train_kwargs, score_batches)
      if level == "token":
        token = prune_tokens(scores[0], token, fraction, schedule.min_tokens)
      else:
        piece = prune_pieces(scores[1], token, piece, fraction, schedule.min_pieces)
    round_dir = os.path.join(model_dir, f"round_{r}")
    metrics = train_fn(model_dir=round_dir, num_steps=num_steps,
                       method=_method_factory(method, start, token, piece),
                       **train_kwargs)
    entry = dict(round=r, level=level, fraction=fraction, metrics=metrics, start=start,
                 export=os.path.join(round_dir, "checkpoints", checkpoints.NUMPY_DIR,
                                     str(num_steps)),
                 token_mask=token.astype(int).tolist(),
                 piece_mask=piece.astype(int).tolist(),
                 survivors=_survivors(token, piece),
                 token_scores=None if scores is None else scores[0].tolist(),
                 piece_scores=None if scores is None else scores[1].tolist())
    report["rounds"].append(entry)
    log.info("XPrompt round %d (%s, %.2f): %d tokens survive: %s", r, level, fraction,
             len(entry["survivors"]["tokens"]), entry["survivors"]["tokens"])
    files.write_json(os.path.join(model_dir, REPORT), report)
  return _finish(model_dir, report, token, piece)


def _finish(model_dir: str, report: dict, token: np.ndarray, piece: np.ndarray) -> dict:
  last = report["rounds"][-1]
  trained = np.load(os.path.join(last["export"], "prompt.npy"))
  final = np.asarray(masked_prompt(jnp.asarray(trained), token, piece), np.float32)
  report["final_prompt"] = os.path.join(model_dir, FINAL_PROMPT)
  np.save(report["final_prompt"], final)
  report["surviving_params"] = surviving_params(token, piece, trained.shape[1])
  report["survivors"] = last["survivors"]
  files.write_json(os.path.join(model_dir, REPORT), report)
  log.info("XPrompt: %d of %d prompt values survive; tokens %s", report["surviving_params"],
           trained.size, report["survivors"]["tokens"])
  return report


def summary(report: Mapping[str, Any]) -> dict:
  """The report's headline: survivors, surviving values, final prompt and
  every round's final metrics."""
  return {"survivors": report["survivors"], "surviving_params": report["surviving_params"],
          "final_prompt": report["final_prompt"], "rewind": report.get("rewind"),
          "rounds": [{k: r[k] for k in ("round", "level", "fraction", "metrics")}
                     for r in report["rounds"]]}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`python -m ptuning_jax.training.recipes.xprompt --gin_file=... [--gin.NAME=VALUE]`:
  the same as `ptuning-jax xprompt ...` (`run_rounds` configured by gin, see
  gin/methods/xprompt.gin)."""
  from ptuning_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.main(["xprompt", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
  sys.exit(main())
