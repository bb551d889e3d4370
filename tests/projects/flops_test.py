"""Model FLOPs: hand counts on tiny configs and the jaxpr dot counter.

Dimension letters: B batch, T input length, P prompt length, E = P + T,
S target length, H d_model, I = N * D attention width, F MLP dim, V vocab.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from ptuning_jax.projects.bench import flops
from ptuning_jax.models import seq2seq
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.backbones import t5
from ptuning_jax import testing

# Gated-GELU, untied head: H=4, N=2, D=3 (I=6), F=5, V=7, one layer each.
GATED = t5.T5Config(vocab_size=7, d_model=4, num_heads=2, d_kv=3, d_ff=5,
                    num_encoder_layers=1, num_decoder_layers=1,
                    relative_attention_num_buckets=4,
                    relative_attention_max_distance=8)
# ReLU, tied head, I=8 != H=6, F=10, V=9, two encoder and three decoder layers.
RELU = t5.T5Config(vocab_size=9, d_model=6, num_heads=2, d_kv=4, d_ff=10,
                   num_encoder_layers=2, num_decoder_layers=3,
                   relative_attention_num_buckets=4,
                   relative_attention_max_distance=8,
                   feed_forward="relu", tie_word_embeddings=True)


def test_hand_count_gated_untied():
  # B=2, T=3, P=2 -> E=5, S=2.
  got = flops.forward_flops_breakdown(GATED, batch=2, input_length=3,
                                      target_length=2, prompt_length=2)
  want = {
      # q, k, v, out: 4 matmuls [E, H] x [H, I] = 4 * 2*5*4*6 = 960, x B=2.
      "encoder_projections": 2 * (4 * 2 * 5 * 4 * 6),  # 1920
      # QK^T and AV: 2 * 2*E*E*I = 2 * 2*5*5*6 = 600, x B.
      "encoder_attention": 2 * (2 * 2 * 5 * 5 * 6),  # 1200
      # wi_0, wi_1 [E, H] x [H, F], wo [E, F] x [F, H]: 3 * 2*5*4*5 = 600, x B.
      "encoder_mlp": 2 * (3 * 2 * 5 * 4 * 5),  # 1200
      # decoder self-attention q, k, v, out on S=2: 4 * 2*2*4*6 = 384, x B.
      "decoder_projections": 2 * (4 * 2 * 2 * 4 * 6),  # 768
      # causal scores + mixing over the full S x S: 2 * 2*2*2*6 = 96, x B.
      "decoder_self_attention": 2 * (2 * 2 * 2 * 2 * 6),  # 192
      # q (2*2*4*6=96) + k, v of E=5 encoder outputs (2 * 2*5*4*6=480)
      # + scores, mixing (2 * 2*2*5*6=240) + out (2*2*6*4=96) = 912, x B.
      "decoder_cross_attention": 2 * (96 + 480 + 240 + 96),  # 1824
      "decoder_mlp": 2 * (3 * 2 * 2 * 4 * 5),  # 480
      # [S, H] x [H, V] = 2*2*4*7 = 112, x B.
      "lm_head": 2 * (2 * 2 * 4 * 7),  # 224
  }
  assert got == want
  total = 1920 + 1200 + 1200 + 768 + 192 + 1824 + 480 + 224
  assert flops.forward_flops(GATED, 2, 3, 2, 2) == total == 7808
  assert flops.train_step_flops(GATED, 2, 3, 2, 2) == 2 * 7808


def test_hand_count_relu_tied_no_prompt():
  # B=1, T=E=4, S=3, L_e=2, L_d=3, I=8, H=6, F=10, V=9.
  got = flops.forward_flops_breakdown(RELU, batch=1, input_length=4,
                                      target_length=3)
  want = {
      "encoder_projections": 2 * (4 * 2 * 4 * 6 * 8),  # 3072
      "encoder_attention": 2 * (2 * 2 * 4 * 4 * 8),  # 1024
      # ReLU: wi and wo only.
      "encoder_mlp": 2 * (2 * 2 * 4 * 6 * 10),  # 1920
      "decoder_projections": 3 * (4 * 2 * 3 * 6 * 8),  # 3456
      "decoder_self_attention": 3 * (2 * 2 * 3 * 3 * 8),  # 864
      # q 2*3*6*8=288, k+v 2 * 2*4*6*8=768, scores+mix 2 * 2*3*4*8=384, out 288.
      "decoder_cross_attention": 3 * (288 + 768 + 384 + 288),  # 5184
      "decoder_mlp": 3 * (2 * 2 * 3 * 6 * 10),  # 2160
      # tied head: the embedding attends, same 2*S*H*V.
      "lm_head": 2 * 3 * 6 * 9,  # 324
  }
  assert got == want
  assert flops.forward_flops(RELU, 1, 4, 3) == sum(want.values()) == 18004


def test_prompt_is_part_of_the_encoder_length():
  with_prompt = flops.forward_flops_breakdown(GATED, 2, 3, 2, prompt_length=2)
  longer_input = flops.forward_flops_breakdown(GATED, 2, 5, 2, prompt_length=0)
  assert with_prompt == longer_input


def _batch(config, b, t, s, seed=0):
  keys = jax.random.split(jax.random.key(seed), 2)
  enc = jax.random.randint(keys[0], (b, t), 2, config.vocab_size)
  tgt = jax.random.randint(keys[1], (b, s), 2, config.vocab_size)
  dec = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": tgt, "decoder_loss_weights": jnp.ones((b, s))}


def _prompt_model(config, p):
  model = seq2seq.Seq2SeqModel(
      t5.T5(config), prompt_tuning.SoftPrompt(t5.hook_spec(config), length=p,
                                        initializer=initializers.normal()))
  trainables = nn.meta.unbox(model.init_trainables(jax.random.key(1),
                                                   initializers.InitContext()))
  return model, trainables, testing.init_params(config)


@pytest.mark.parametrize("config,b,t,s,p", [(GATED, 2, 3, 2, 2), (RELU, 1, 4, 3, 3),
                                            (testing.tiny_config(), 3, 6, 4, 5)])
def test_formula_equals_traced_forward_matmuls(config, b, t, s, p):
  model, trainables, frozen = _prompt_model(config, p)
  batch = _batch(config, b, t, s)
  traced = flops.traced_dot_flops(
      lambda tr: model.loss_fn(tr, frozen, batch)[0], trainables)
  assert traced == flops.forward_flops(config, b, t, s, p)


def test_prompt_gradient_has_no_weight_gradient_work():
  model, trainables, frozen = _prompt_model(GATED, 2)
  batch = _batch(GATED, 2, 3, 2)
  forward = flops.forward_flops(GATED, 2, 3, 2, 2)
  prompt_only = flops.traced_dot_flops(
      jax.grad(lambda tr: model.loss_fn(tr, frozen, batch)[0]), trainables)
  everything = flops.traced_dot_flops(
      jax.grad(lambda tr, fr: model.loss_fn(tr, fr, batch)[0], argnums=(0, 1)),
      trainables, frozen)
  # Full fine-tuning: forward + input gradients + weight gradients = 3x.
  assert everything == 3 * forward
  # Prompt tuning: about 2x (attention backward is 2x its forward, the first
  # decoder layer's prompt-independent work needs no backward).
  assert 1.8 * forward < prompt_only < 2.2 * forward


def test_dot_flops_counts_scan_cond_and_nested_calls():
  a, b = jnp.ones((3, 4)), jnp.ones((4, 5))
  one = 2 * 3 * 4 * 5
  assert flops.traced_dot_flops(jnp.dot, a, b) == one
  assert flops.traced_dot_flops(jax.jit(jnp.dot), a, b) == one

  def scanned(a, b):
    return jax.lax.scan(lambda c, _: (c, a @ b), 0.0, None, length=7)[1]
  assert flops.traced_dot_flops(scanned, a, b) == 7 * one

  def branches(a, b):
    return jax.lax.cond(True, lambda: jnp.sum(a @ b), lambda: jnp.sum(a))
  assert flops.traced_dot_flops(branches, a, b) == one
  batched = jnp.ones((6, 3, 4)), jnp.ones((6, 4, 5))
  assert flops.traced_dot_flops(jnp.matmul, *batched) == 6 * one
  assert flops.dot_output_shapes(jax.make_jaxpr(jnp.matmul)(*batched)) == [(6, 3, 5)]


def test_dot_flops_rejects_while_loops():
  def loop(a):
    return jax.lax.while_loop(lambda x: jnp.sum(x) < 10, lambda x: x @ x, a)
  with pytest.raises(ValueError, match="while"):
    flops.traced_dot_flops(loop, jnp.ones((2, 2)))


@pytest.mark.parametrize("name,value", [("batch", 0), ("input_length", -1),
                                        ("prompt_length", -2), ("target_length", 1.5)])
def test_bad_lengths_name_the_argument(name, value):
  kwargs = dict(batch=1, input_length=2, target_length=2, prompt_length=0)
  kwargs[name] = value
  with pytest.raises(ValueError, match=name):
    flops.forward_flops(GATED, **kwargs)
