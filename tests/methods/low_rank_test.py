"""Low-rank prompts (DPT / LoPT-1): count b (P + H), SVD init, folding, training."""
import numpy as np
import pytest

import method_testing as mt
from ptuning_jax import methods
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.backbones import t5
from ptuning_jax.methods import low_rank

P, RANK = 4, 2


def test_param_count_is_b_times_p_plus_h():
  cfg = mt.config()
  method = low_rank.LowRankPrompt(mt.spec(cfg), length=P, rank=RANK, init_mode="random")
  assert methods.count_params(method) == RANK * (P + cfg.d_model)
  # DPT's Figure 1: T5-Large, P = 100, b = 10 -> 11,240 (vs 102,400).
  large = t5.get_config("large")
  assert methods.count_params(low_rank.LowRankPrompt(
      mt.spec(large), length=100, rank=10, init_mode="random")) == 11_240


def test_svd_init_is_best_rank_b_approximation_of_the_initial_prompt():
  cfg = mt.config()
  _, params = mt.frozen(cfg)
  full = np.random.default_rng(0).normal(size=(P, cfg.d_model)).astype(np.float32)
  method = low_rank.LowRankPrompt(mt.spec(cfg), length=P, rank=RANK,
                                  initializer=lambda rng, shape, ctx: full)
  trainables = mt.init(method, params)
  u, s, vt = np.linalg.svd(full, full_matrices=False)
  best = (u[:, :RANK] * s[:RANK]) @ vt[:RANK]  # Eckart-Young
  np.testing.assert_allclose(trainables["low_rank_a"] @ trainables["low_rank_b"], best,
                             atol=1e-5)
  # Balanced factors: A^T A = B B^T = diag(S_b).
  np.testing.assert_allclose(trainables["low_rank_a"].T @ trainables["low_rank_a"],
                             np.diag(s[:RANK]), atol=1e-4)
  np.testing.assert_allclose(trainables["low_rank_b"] @ trainables["low_rank_b"].T,
                             np.diag(s[:RANK]), atol=1e-4)


def test_fold_gives_identical_outputs():
  folded, _ = mt.check_fold(low_rank.LowRankPrompt(mt.spec(mt.config()), length=P, rank=RANK))
  assert isinstance(folded, prompt_tuning.SoftPrompt)


def test_rank_above_min_dim_is_an_error():
  with pytest.raises(ValueError, match="rank=5 exceeds"):
    methods.count_params(low_rank.LowRankPrompt(mt.spec(mt.config()), length=4, rank=5,
                                                init_mode="random"))


def test_training_sharded_equals_unsharded(tmp_path):
  cfg = mt.sharded_config()
  result = mt.check_training(tmp_path, mt.partial(
      low_rank.LowRankPrompt, length=P, rank=RANK, initializer=initializers.sampled_vocab(100)))
  assert result["trainable_params"] == RANK * (P + cfg.d_model)
