"""Every registered task on the real files of ../shared/data (where present)."""
import os

import pytest
import seqio

from ptuning_jax.data.seqio import inspection  # noqa: F401  (registers all tasks)
from ptuning_jax.data.seqio import lester_tasks
from ptuning_jax.data.seqio import mpt_tasks
from ptuning_jax.data.seqio import sources


def _available(task, data_dir):
  """Splits of `task` whose raw file exists under `data_dir`."""
  src = task.source
  out = []
  for split in task.splits:
    raw_split = src.protocol.raw_split_of(split)
    try:
      sources.local_file(src.raw, raw_split, data_dir, task.name)
    except FileNotFoundError:
      continue
    out.append(split)
  return out


@pytest.mark.slow
def test_every_task_with_local_data_runs(shared_data, t5_vocab_path):
  old = os.environ.get("PTUNING_JAX_SPM_PATH")
  os.environ["PTUNING_JAX_SPM_PATH"] = str(t5_vocab_path)
  sources.configure("local", str(shared_data))
  sources.clear_caches()
  checked = []
  try:
    for name in sorted(seqio.TaskRegistry.names()):
      if not name.startswith(("mpt_", "glue_", "super_glue_", "taskless_")):
        continue
      task = seqio.get_mixture_or_task(name)
      available = _available(task, str(shared_data))
      for i, split in enumerate(available):
        ref = (mpt_tasks.reference_sizes(name)
               or lester_tasks.reference_sizes(name) or {})
        n = task.num_input_examples(split)
        if split in ref:
          assert n == ref[split], (name, split)
        checked.append((name, split))
        if i < len(available) - 1:
          continue  # the full pipeline once per task: its last split.
        exs = list(task.get_dataset({"inputs": 512, "targets": 32},
                                    split=split, shuffle=False)
                   .take(2).as_numpy_iterator())
        assert exs, (name, split)
        for ex in exs:
          assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
          assert ex["inputs_pretokenized"] and ex["targets_pretokenized"]
  finally:
    sources.reset()
    if old is None:
      os.environ.pop("PTUNING_JAX_SPM_PATH")
    else:
      os.environ["PTUNING_JAX_SPM_PATH"] = old
  names = {n for n, _ in checked}
  for expected in ("mpt_cola", "mpt_sst2", "mpt_mrpc", "mpt_stsb", "mpt_rte",
                   "mpt_cb", "mpt_multirc", "mpt_wic", "mpt_wsc", "mpt_boolq",
                   "mpt_qnli", "mpt_mnli", "mpt_cb_k16",
                   "taskless_super_glue_copa_v102", "glue_mnli_matched_v200",
                   "super_glue_wsc_v102_simple_eval"):
    assert expected in names, expected
