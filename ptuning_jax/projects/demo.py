"""The embedded default: an honest, offline, CPU-sized prompt-tuning run.

  ptuning-jax demo [--workdir DIR] [--pretrain_steps N] [--prompt_steps N]

No pretrained T5 can be downloaded here, so the demo first makes its own toy
backbone: a small T5 1.1-style model trained for a few minutes on the
synthetic multi-task mixture of `ptuning_jax.data.synthetic`, through the
same run path as everything else (`run.train` with full fine-tuning of a
randomly initialised backbone, exported in the Hugging Face layout). Then it
does what a user does with a real checkpoint: loads it frozen, prompt-tunes a fresh soft prompt on the
held-out `freq` task (never seen in pretraining) with the standard trainer,
checkpoints and metrics, and prints rank-classification accuracy before and
after, plus the trainable fraction. The backbone is a toy trained on the spot;
the numbers say nothing about real models.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import tempfile
import time

from ptuning_jax import backbones
from ptuning_jax.backbones import t5
from ptuning_jax.data import synthetic
from ptuning_jax.data import text_data
from ptuning_jax.data import vocab as vocab_lib
from ptuning_jax.methods import baselines
from ptuning_jax.methods import initializers
from ptuning_jax.methods import prompt_tuning
from ptuning_jax.training import evaluation
from ptuning_jax.training import optimizers
from ptuning_jax.training import run as run_lib

FEATURE_LENGTHS = {"inputs": synthetic.MAX_INPUT_CHARS + 2,
                   "targets": synthetic.MAX_TARGET_CHARS + 2}


def backbone_config() -> t5.T5Config:
  """A T5 1.1-style toy (gated-GELU, untied head) over the byte vocabulary."""
  return t5.T5Config(vocab_size=vocab_lib.ByteVocab().vocab_size, d_model=128,
                     num_heads=4, d_kv=32, d_ff=256, num_encoder_layers=3,
                     num_decoder_layers=3, relative_attention_num_buckets=16,
                     relative_attention_max_distance=32,
                     feed_forward="gated-gelu", tie_word_embeddings=False)


def pretrain_backbone(out_dir: str, steps: int, batch_size: int = 64,
                      seed: int = 0, log=print) -> str:
  """Trains the toy backbone on the synthetic mixture (the ordinary run path:
  full fine-tuning of a randomly initialised backbone) and saves it in the
  Hugging Face layout in `out_dir`."""
  vocab = vocab_lib.ByteVocab()
  data = text_data.TextTaskData(
      {"train": synthetic.mixture_examples("train", 40000, seed)}, vocab,
      FEATURE_LENGTHS, batch_size, seed)
  optimizer = optimizers.OptimizerConfig(
      name="adamw", learning_rate=3e-3, schedule="cosine",
      warmup_steps=min(200, steps // 10), total_steps=steps, end_lr_factor=0.1,
      weight_decay=0.01, clip_grad_norm=1.0)
  start = time.perf_counter()
  result = run_lib.train(
      model_dir=out_dir + ".run", backbone=backbones.BackboneSpec(
          config=backbone_config(), seed=seed),
      method=baselines.FullFinetune, data=data, optimizer=optimizer,
      num_steps=steps, log_every=max(steps // 10, 1), checkpoint_every=0,
      keep_checkpoints=1, seed=seed, progress_bar=False)
  log(f"  pretrained {steps} steps: loss {result['train/loss']:.4f} "
      f"({time.perf_counter() - start:.0f}s)")
  shutil.rmtree(out_dir, ignore_errors=True)
  shutil.copytree(result["backbone_dir"], out_dir)
  return out_dir


def heldout_data(vocab, batch_size: int, seed: int) -> text_data.TextTaskData:
  task = synthetic.HELDOUT_TASK
  splits = {"train": synthetic.train_examples(task, 4096, seed),
            "validation": synthetic.eval_examples(task, 512, seed)}
  return text_data.TextTaskData(splits, vocab, FEATURE_LENGTHS, batch_size, seed,
                                label_strings=synthetic.label_strings(task))


def run(workdir: str, pretrain_steps: int, prompt_steps: int,
        prompt_length: int = 16, seed: int = 0, log=print) -> dict:
  """The whole demo; returns the before/after metrics."""
  backbone_dir = os.path.join(workdir, "backbone")
  if not os.path.exists(os.path.join(backbone_dir, "config.json")):
    log(f"[1/3] pretraining a toy backbone ({pretrain_steps} steps) -> {backbone_dir}")
    pretrain_backbone(backbone_dir, pretrain_steps, seed=seed, log=log)
  else:
    log(f"[1/3] reusing the toy backbone in {backbone_dir}")
  vocab = vocab_lib.ByteVocab()
  common = dict(
      backbone=backbones.BackboneSpec(checkpoint_dir=backbone_dir),
      method=functools.partial(
          prompt_tuning.SoftPrompt, length=prompt_length,
          initializer=initializers.sampled_vocab(population_size=vocab.vocab_size)),
      data=heldout_data(vocab, 32, seed), seed=seed)
  eval_config = evaluation.EvalConfig(mode="rank", batch_size=64, best_metric="accuracy")
  log("[2/3] frozen backbone + untrained prompt on the held-out task 'freq'")
  before = run_lib.evaluate(eval_config=eval_config, **common)
  log(f"  accuracy before prompt tuning: {before['accuracy']:.1f}%")
  log(f"[3/3] prompt tuning ({prompt_steps} steps, Adafactor lr 0.3)")
  after = run_lib.train(
      model_dir=os.path.join(workdir, "prompt_run"), num_steps=prompt_steps,
      optimizer=optimizers.OptimizerConfig(), eval_every=prompt_steps,
      eval_config=eval_config, checkpoint_every=prompt_steps, log_every=25,
      **common)
  result = {"accuracy_before": before["accuracy"],
            "accuracy_after": after["eval/accuracy"],
            "trainable_params": after["trainable_params"],
            "trainable_fraction": after["trainable_fraction"]}
  log(f"\nheld-out task 'freq' (rank classification over a/b/c, chance 33.3%):\n"
      f"  accuracy before prompt tuning: {result['accuracy_before']:.1f}%\n"
      f"  accuracy after  prompt tuning: {result['accuracy_after']:.1f}%\n"
      f"  trainable parameters: {result['trainable_params']} "
      f"({100 * result['trainable_fraction']:.3f}% of the model)\n"
      f"  outputs: {workdir}")
  return result


def main(argv=None):
  p = argparse.ArgumentParser(prog="ptuning-jax demo", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default=None,
                 help="where the backbone and the prompt run go (default: a new temp dir).")
  p.add_argument("--pretrain_steps", type=int, default=1500,
                 help="steps training the toy backbone, if WORKDIR has none "
                 "(default: %(default)s).")
  p.add_argument("--prompt_steps", type=int, default=300,
                 help="prompt-tuning steps (default: %(default)s).")
  p.add_argument("--prompt_length", type=int, default=16,
                 help="soft prompt tokens (default: %(default)s).")
  p.add_argument("--seed", type=int, default=0,
                 help="seed of the backbone, the data and the prompt (default: %(default)s).")
  args = p.parse_args(argv)
  logging.getLogger("absl").setLevel(logging.WARNING)
  workdir = args.workdir or tempfile.mkdtemp(prefix="ptuning_jax_demo_")
  return run(workdir, args.pretrain_steps, args.prompt_steps, args.prompt_length,
             args.seed)
