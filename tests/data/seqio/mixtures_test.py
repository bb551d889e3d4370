"""Tests of the benchmark mixtures and their rates."""
import pytest
import seqio

from ptuning_jax.data.seqio import mixtures
from ptuning_jax.data.seqio import mpt_tasks


def _tasks(name):
  return sorted(t.name for t in seqio.get_mixture_or_task(name).tasks)


def test_mpt_groups():
  assert _tasks("mpt_mix_glue") == sorted(
      f"mpt_{d}" for d in ("mnli", "qqp", "qnli", "sst2", "stsb", "mrpc",
                           "rte", "cola"))
  assert _tasks("mpt_mix_super_glue") == sorted(
      f"mpt_{d}" for d in ("multirc", "boolq", "wic", "wsc", "cb"))
  assert _tasks("mpt_mix_mrqa") == sorted(
      f"mpt_{d}" for d in ("nq", "hotpotqa", "searchqa", "newsqa"))
  assert _tasks("mpt_mix_others") == sorted(
      f"mpt_{d}" for d in ("winogrande", "yelp", "scitail", "paws"))
  assert len(_tasks("mpt_mix_targets")) == 21
  assert _tasks("mpt_mix_sources") == sorted(
      f"mpt_{d}" for d in ("mnli", "qnli", "qqp", "sst2", "squad", "record"))


def test_proportional_and_equal_rates():
  mix = seqio.get_mixture_or_task("mpt_mix_super_glue")
  rate = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rate["mpt_cb"] == 250 and rate["mpt_boolq"] == 9427
  eq = seqio.get_mixture_or_task("mpt_mix_super_glue_equal")
  assert {eq.get_rate(t) for t in eq.tasks} == {1.0}
  yelp = seqio.get_mixture_or_task("mpt_yelp")
  assert mixtures.rate_fn()(yelp) == 100_000.0


def test_rate_settings():
  cb = seqio.get_mixture_or_task("mpt_cb")
  boolq = seqio.get_mixture_or_task("mpt_boolq")
  fn = mixtures.rate_fn("proportional", temperature=2.0, maximum=1000)
  assert fn(cb) == pytest.approx(250 ** 0.5)
  assert fn(boolq) == pytest.approx(1000 ** 0.5)
  with pytest.raises(ValueError, match="rate"):
    mixtures.rate_fn("sqrt")
  with pytest.raises(ValueError, match="temperature"):
    mixtures.rate_fn(temperature=0)
  name = mixtures.register_mixture("test_mix_cb_boolq", ["mpt_cb", "mpt_boolq"],
                                   temperature=2.0)
  mix = seqio.get_mixture_or_task(name)
  assert mix.get_rate(cb) == pytest.approx(250 ** 0.5)
  with pytest.raises(ValueError, match="not registered"):
    mixtures.register_mixture("test_mix_bad", ["mpt_cb", "nope_task"])


def test_on_demand_few_shot_task_in_mixture():
  name = mixtures.register_mixture("test_mix_k4", ["mpt_cb_k4", "mpt_rte_k4"])
  mix = seqio.get_mixture_or_task(name)
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rates == {"mpt_cb_k4": 12.0, "mpt_rte_k4": 8.0}
  assert mpt_tasks.reference_sizes("mpt_rte_k4")["train"] == 8


def test_lester_mixtures():
  assert _tasks("taskless_glue_mnli_and_dev_v200") == [
      "taskless_glue_mnli_matched_v200", "taskless_glue_mnli_mismatched_v200",
      "taskless_glue_mnli_v200"]
  assert _tasks("super_glue_wsc_and_dev_v102_simple") == [
      "super_glue_wsc_v102_simple_eval", "super_glue_wsc_v102_simple_train"]
  mix = seqio.get_mixture_or_task("glue_v200")
  qqp = seqio.get_mixture_or_task("glue_qqp_v200")
  assert mix.get_rate(qqp) == 363_849
  assert len(mix.tasks) == 8
