"""XPrompt: masks, importance scores, pruning, rewinding and the rounds."""
import functools
import json
import os

import jax
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax import backbones
from ptuning_jax import methods
from ptuning_jax.models import seq2seq
from ptuning_jax.training import optimizers
from ptuning_jax.methods import initializers
from ptuning_jax.backbones import t5
from ptuning_jax.training import run as run_lib
from ptuning_jax.training.recipes import xprompt as xprompt_recipe
from ptuning_jax.methods import xprompt

P, K = 4, 3  # prompt length, pieces per token (d_model 12: pieces of 4)
TOKEN_MASK = (1, 0, 1, 1)
PIECE_MASK = ((1, 1, 1), (1, 1, 1), (0, 1, 0), (1, 1, 0))


def _method(cfg, **kw):
  return xprompt.XPrompt(mt.spec(cfg), **dict(dict(length=P, num_pieces=K,
                                          initializer=initializers.normal()), **kw))


def test_param_counts():
  for cfg in (mt.config(), t5.get_config("base")):
    assert methods.count_params(_method(cfg)) == P * cfg.d_model
  h = mt.config().d_model
  # kept (token, piece) pairs: token 0: 3, token 2: 1, token 3: 2 -> 6 pieces of H / k.
  assert xprompt.surviving_params(np.array(TOKEN_MASK), np.array(PIECE_MASK), h) == 6 * h // K


def test_masks_zero_exactly_the_intended_tokens_and_pieces():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  method = _method(cfg, token_mask=TOKEN_MASK, piece_mask=PIECE_MASK)
  tr = mt.init(method, params)
  x = np.random.default_rng(0).normal(size=(2, 5, cfg.d_model)).astype(np.float32)
  out, mask = method.apply({"params": tr}, 2).inputs["encoder"](
      x, np.ones((2, 5), np.int32), np.ones((2, 5), bool))
  assert out.shape == (2, P + 5, cfg.d_model) and np.asarray(mask).all()
  width = cfg.d_model // K
  prompt = np.asarray(tr["prompt"])
  assert (prompt != 0).all()
  for i in range(P):
    for j in range(K):
      piece = np.asarray(out[:, i, j * width:(j + 1) * width])
      if TOKEN_MASK[i] and PIECE_MASK[i][j]:
        np.testing.assert_array_equal(piece, np.broadcast_to(
            prompt[i, j * width:(j + 1) * width], piece.shape))  # untouched, bit for bit
      else:
        np.testing.assert_array_equal(piece, 0.0)
  np.testing.assert_array_equal(out[:, P:], x)
  folded, folded_params = xprompt.fold(method, tr)
  np.testing.assert_array_equal(
      folded.apply({"params": folded_params}, 2).inputs["encoder"](
          x, np.ones((2, 5), np.int32), np.ones((2, 5), bool))[0], out)
  with pytest.raises(ValueError, match=r"XPrompt.token_mask must be \(4,\) entries"):
    mt.init(_method(cfg, token_mask=(1, 0, 2, 1)), params)
  with pytest.raises(ValueError, match="num_pieces=13 exceeds the embed width 12"):
    mt.init(_method(cfg, num_pieces=13), params)
  # k = 5 does not divide H = 12: pieces of 2 or 3 contiguous values.
  np.testing.assert_array_equal(xprompt.piece_of(12, 5),
                                [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4])
  assert xprompt.surviving_params(np.ones(1), np.array([[1, 0, 1, 0, 0]]), 12) == 6


def test_importance_scores_are_summed_per_example_sensitivities():
  cfg = mt.config()
  module, params = mt.frozen(cfg)
  method = _method(cfg, token_mask=TOKEN_MASK)
  tr = mt.init(method, params)
  model = seq2seq.Seq2SeqModel(module, method)
  batch = mt.make_batch(cfg.vocab_size, batch=4)
  score = jax.jit(functools.partial(xprompt_recipe.score_fn, model))
  token, piece = jax.device_get(score({"method": tr}, params, batch))
  assert token.shape == (P,) and piece.shape == (P, K)
  assert token[1] == 0 and (piece[1] == 0).all()  # a pruned token has no sensitivity
  assert (token[[0, 2, 3]] > 0).all() and (piece[[0, 2, 3]] > 0).all()
  # One example at a time: d(batch loss)/d(gamma_b) = (W_b / W) d(loss_b)/d(gamma).
  weights = batch["decoder_loss_weights"].sum(1)
  want_token, want_piece = 0.0, 0.0
  for b in range(4):  # example b alone: the others' loss weights zeroed
    single = dict(batch, decoder_loss_weights=batch["decoder_loss_weights"] * (
        np.arange(4) == b)[:, None])
    t, p = jax.device_get(score({"method": tr}, params, single))
    want_token = want_token + t * weights[b] / weights.sum()
    want_piece = want_piece + p * weights[b] / weights.sum()
  np.testing.assert_allclose(token, want_token, rtol=1e-4)
  np.testing.assert_allclose(piece, want_piece, rtol=1e-4)


def test_pruning_rounds():
  scores = np.array([0.5, 0.1, 0.9, 0.3, 0.2])
  mask = xprompt_recipe.prune_tokens(scores, np.ones(5), 0.4)
  np.testing.assert_array_equal(mask, [1, 0, 1, 1, 0])  # two lowest of five
  mask = xprompt_recipe.prune_tokens(scores, mask, 0.5)
  np.testing.assert_array_equal(mask, [1, 0, 1, 0, 0])  # one of the three left
  np.testing.assert_array_equal(xprompt_recipe.prune_tokens(scores, mask, 0.9, min_tokens=2),
                                mask)  # never below min_tokens
  piece_scores = np.array([[3.0, 1.0, 2.0, 0.5]] * 2)
  pieces = xprompt_recipe.prune_pieces(piece_scores, np.array([1, 0]), np.ones((2, 4)), 0.5)
  np.testing.assert_array_equal(pieces, [[1, 0, 1, 0], [1, 1, 1, 1]])  # token 1 is pruned
  with pytest.raises(ValueError, match="fraction 1.0 must lie in"):
    xprompt_recipe.prune_tokens(scores, mask, 1.0)
  schedule = xprompt_recipe.PruningSchedule(token_fractions=(0.5,), piece_fractions=(0.5, 0.5))
  assert schedule.rounds() == [("token", 0.5), ("piece", 0.5), ("piece", 0.5)]


def test_training_sharded_equals_unsharded(tmp_path):
  mt.check_training(tmp_path, functools.partial(
      xprompt.XPrompt, length=P, num_pieces=2, token_mask=(1, 1, 0, 1)))


@pytest.mark.slow
def test_rounds_prune_rewind_and_report(tmp_path):
  calls = []

  def recording_train(**kwargs):
    calls.append(kwargs["method"])
    return run_lib.train(**kwargs)

  method = functools.partial(xprompt.XPrompt, length=P, num_pieces=2)
  report = xprompt_recipe.run_rounds(
      model_dir=str(tmp_path), method=method, num_steps=2, train_fn=recording_train,
      schedule=xprompt_recipe.PruningSchedule(token_fractions=(0.5,), piece_fractions=(0.5,)),
      score_batches=1, backbone=backbones.BackboneSpec(checkpoint_dir=mt.backbone_dir()),
      data=mt.smoke_data(), optimizer=optimizers.OptimizerConfig(), log_every=1,
      progress_bar=False, mesh=run_lib.MeshConfig(data=2, model=4))
  assert [r["level"] for r in report["rounds"]] == ["none", "token", "piece"]
  assert report["rounds"][0]["survivors"]["tokens"] == [0, 1, 2, 3]
  token_round, piece_round = report["rounds"][1], report["rounds"][2]
  kept = token_round["survivors"]["tokens"]
  assert len(kept) == 2
  assert kept == sorted(np.argsort(token_round["token_scores"], kind="stable")[2:].tolist())
  assert all(len(piece_round["survivors"]["pieces"][str(i)]) == 1 for i in kept)
  h = mt.sharded_config().d_model
  assert report["surviving_params"] == 2 * h // 2
  with open(os.path.join(str(tmp_path), xprompt_recipe.REPORT)) as f:
    assert json.load(f)["survivors"] == report["survivors"]
  # Every round starts from P0 bit for bit (rewinding).
  initial = np.load(report["initial_prompt"])
  frozen_params = mt.random_params(mt.sharded_config())
  for factory in calls:
    start = mt.init(factory(spec=mt.spec(mt.sharded_config())), frozen_params)
    np.testing.assert_array_equal(start["prompt"], initial)
  # The final prompt is the last trained prompt with the masks applied.
  final = np.load(report["final_prompt"])
  trained = np.load(os.path.join(piece_round["export"], "prompt.npy"))
  np.testing.assert_array_equal(final, np.asarray(xprompt.masked_prompt(
      trained, np.array(piece_round["token_mask"]), np.array(piece_round["piece_mask"]))))
  assert (final[[i for i in range(P) if i not in kept]] == 0).all()


@pytest.mark.needs("tensorflow", "seqio")
def test_command_line_rounds_rewind_to_the_trained_prompt(tmp_path, byte_backbone, capsys):
  from ptuning_jax import cli  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / "xprompt"
  assert cli.main(["xprompt", "--gin_file", "configs/synthetic_freq_xprompt.gin",
                   f"--gin.CHECKPOINT_DIR='{byte_backbone}'", f"--gin.MODEL_DIR='{model_dir}'",
                   "--gin.TRAIN_STEPS=2", "--gin.EVAL_EVERY=2", "--gin.CHECKPOINT_EVERY=2",
                   "--gin.EVAL_MAX_EXAMPLES=16", "--gin.BATCH_SIZE=8",
                   "--gin.PROMPT_LENGTH=4", "--gin.XPROMPT_TOKEN_FRACTIONS=[0.5]",
                   "--gin.XPROMPT_PIECE_FRACTIONS=[]", "--gin.XPROMPT_SCORE_BATCHES=1",
                   "--gin.XPROMPT_REWIND='trained'"]) == 0
  out = capsys.readouterr().out
  summary = json.loads(out[out.index("{"):])
  assert summary["rewind"] == "trained" and len(summary["survivors"]["tokens"]) == 2
  assert [r["level"] for r in summary["rounds"]] == ["none", "token"]
  assert "eval/accuracy" in summary["rounds"][1]["metrics"]
  report = json.loads((model_dir / xprompt_recipe.REPORT).read_text())
  round0, round1 = report["rounds"]
  assert round0["start"] == report["initial_prompt"]
  assert round1["start"] == os.path.join(round0["export"], "prompt.npy")
  with pytest.raises(ValueError, match="run_rounds.rewind='sideways'; expected one of"):
    xprompt_recipe.run_rounds(model_dir=str(tmp_path / "bad"), method=None, num_steps=1,
                       rewind="sideways")
