"""The lever sweep: which runs it makes, how it summarises, and one real sweep."""
import json

import pytest

from ptuning_jax.projects.bench import levers
from ptuning_jax.backbones import t5


def test_variants_change_one_lever_each():
  todo = levers.variants("bf16", ["--attention", "auto"])
  assert todo[0] == ("baseline", "every lever on", [])
  names = [lever for lever, _, _ in todo[1:]]
  assert list(dict.fromkeys(names)) == [
      "dtype", "weight gradients", "remat", "attention", "donation", "host sync",
      "input feed", "allocator"]
  extras = {name: extra for _, name, extra in todo}
  assert extras["fp32 instead of bf16"] == ["--dtype", "fp32"]
  remat = [extra[1] for lever, _, extra in todo if lever == "remat"]
  assert remat == [p for p in t5.REMAT_POLICIES if p != "none"]
  # The baseline's attention (from --bench_args) is not a variant.
  attention = [extra[1] for lever, _, extra in todo if lever == "attention"]
  assert attention == ["xla", "fused_xla", "cudnn"]
  assert levers.variants("fp32", [])[1][2] == ["--dtype", "bf16"]
  assert "xla" not in [e[1] for l, _, e in levers.variants("fp32", []) if l == "attention"]


def test_lever_selection_and_unknown_names():
  args = levers.parser().parse_args(["--levers", "donation,remat"])
  picked = levers.selected(args)
  assert picked[0][0] == "baseline"
  assert {lever for lever, _, _ in picked[1:]} == {"donation", "remat"}
  with pytest.raises(SystemExit, match="'dtypes'"):
    levers.selected(levers.parser().parse_args(["--levers", "dtypes"]))


def _record(lever, variant, ex, rss, round_=0):
  return {"lever": lever, "variant": variant, "examples_per_s": ex, "step_s": 8 / ex,
          "peak_mem_gib": None, "child_peak_rss_gib": rss, "round": round_}


def test_summary_ratios_against_the_baseline_and_failed_runs():
  records = [_record("baseline", "every lever on", 100.0, 2.0),
             _record("baseline", "every lever on", 120.0, 2.0, 1),
             _record("baseline", "every lever on", 110.0, 2.0, 2),
             _record("remat", "--remat full", 55.0, 1.0),
             {"lever": "attention", "variant": "--attention cudnn", "round": 0,
              "error": "ValueError: attention_impl='cudnn' cannot be used: it needs a GPU"}]
  rows = levers.summarize(records)
  by = {r["variant"]: r for r in rows}
  assert by["every lever on"]["examples_per_s"] == 110.0  # median of 3
  assert (by["every lever on"]["examples_per_s_min"],
          by["every lever on"]["examples_per_s_max"]) == (100.0, 120.0)
  assert by["--remat full"]["speed_vs_baseline"] == 0.5
  assert by["--remat full"]["memory_vs_baseline"] == 0.5
  assert by["--remat full"]["memory_kind"] == "process peak RSS"
  assert by["--attention cudnn"]["runs"] == 0 and "GPU" in by["--attention cudnn"]["error"]
  table = levers.format_table(rows)
  assert "0.5" in table and "failed" in table
  assert table.splitlines()[-1].startswith("attention / --attention cudnn: ValueError")


def test_error_line_is_the_exception_not_the_traceback_banner():
  tail = ("Traceback (most recent call last):\n  File \"x\", line 1\n"
          "ValueError: attention_impl='cudnn' cannot be used\n"
          "--------------------\n"
          "For simplicity, JAX has removed its internal frames from the traceback\n")
  assert levers._error_line(tail) == "ValueError: attention_impl='cudnn' cannot be used"
  assert levers._error_line("") == "no output"
  assert levers._error_line("killed\n") == "killed"


@pytest.mark.slow
def test_sweep_end_to_end_on_the_cpu(capsys, tmp_path):
  out = tmp_path / "runs.jsonl"
  rows = levers.main(["--json_out", str(out), "--size", "tiny", "--batch", "2", "--inputs", "8",
                            "--targets", "4", "--prompt", "3", "--steps", "2",
                            "--warmup", "1", "--levers", "weight gradients,attention",
                            "--bench_args", "--mesh_data 1"])
  by = {r["variant"]: r for r in rows}
  assert set(by) == {"every lever on", "also differentiate frozen weights",
                     "--attention fused_xla", "--attention cudnn", "--attention auto"}
  assert by["every lever on"]["speed_vs_baseline"] == 1.0
  assert by["also differentiate frozen weights"]["examples_per_s"] > 0
  # No GPU here: cuDNN is refused with the bench's own reason; "auto" falls back.
  assert "needs a GPU" in by["--attention cudnn"]["error"]
  assert by["--attention auto"]["examples_per_s"] > 0
  assert "lever" in capsys.readouterr().out
  runs = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(runs) == 5 and {r["lever"] for r in runs} == {
      "baseline", "weight gradients", "attention"}
