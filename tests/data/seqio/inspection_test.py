"""Tests of the listing/inspection behind `ptuning-jax tasks` and `inspect`."""
import os

import pytest

from ptuning_jax.data.seqio import inspection
from ptuning_jax.data.seqio import sources


@pytest.fixture
def local_shared(shared_data, t5_vocab_path):
  old = os.environ.get("PTUNING_JAX_SPM_PATH")
  os.environ["PTUNING_JAX_SPM_PATH"] = str(t5_vocab_path)
  sources.configure("local", str(shared_data))
  sources.clear_caches()
  yield shared_data
  sources.reset()
  if old is None:
    os.environ.pop("PTUNING_JAX_SPM_PATH")
  else:
    os.environ["PTUNING_JAX_SPM_PATH"] = old


def test_list_tasks_reference_sizes():
  rows = {r.name: r for r in inspection.list_tasks()}
  assert rows["mpt_rte"].splits == {"train": 2490, "validation": 138,
                                    "test": 139}
  assert rows["mpt_rte"].kind == "task" and not rows["mpt_rte"].counted
  assert rows["taskless_glue_sst2_v200"].splits == {"train": 67349,
                                                    "validation": 872}
  assert rows["mpt_mix_targets"].kind == "mixture"
  assert rows["mpt_mix_targets"].note == "21 tasks"
  table = inspection.format_task_table([rows["mpt_rte"],
                                        rows["mpt_mix_glue"]])
  assert "mpt_rte" in table and "train=2,490 validation=138 test=139 (ref)" in (
      table)
  assert "[8 tasks]" in table


def test_list_tasks_counted_on_local_files(local_shared):
  rows = inspection.list_tasks(with_sizes=True, prefixes=("mpt_cb", "mpt_qnli"))
  rows = {r.name: r for r in rows}
  assert rows["mpt_cb"].splits == {"train": 250, "validation": 28, "test": 28}
  assert rows["mpt_cb"].counted
  qnli = rows["mpt_qnli"]
  assert qnli.splits["test"] == 5463 and qnli.splits["train"] is None
  assert "glue/qnli/train.tsv" in qnli.note


def test_inspect_task_shows_text_and_token_counts(local_shared):
  out = inspection.inspect_task("mpt_rte", split="validation", n=2,
                                sequence_length={"inputs": 16, "targets": 4})
  assert out.startswith("=== mpt_rte [validation]\nlabels: 0, 1")
  assert out.count("--- example") == 2
  assert "inputs (" in out and "tokens incl. EOS > inputs length 16" in out
  assert "sentence1: " in out and "targets (2 tokens incl. EOS): " in out


def test_inspect_errors():
  with pytest.raises(ValueError, match="no task or mixture named"):
    inspection.inspect_task("mpt_nonexistent")
  with pytest.raises(ValueError, match="has no split 'test'"):
    inspection.inspect_task("glue_rte_v200", split="test")
  with pytest.raises(ValueError, match="n=0"):
    inspection.inspect_task("glue_rte_v200", n=0)
