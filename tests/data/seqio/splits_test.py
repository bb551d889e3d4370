"""Tests of the split protocol, k-shot sampling and ProtocolSource."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ptuning_jax.data.seqio import sources
from ptuning_jax.data.seqio import splits


@pytest.fixture(autouse=True)
def _fresh_source_config():
  sources.reset()
  sources.clear_caches()
  yield
  sources.reset()
  sources.clear_caches()


def test_torch_randperm_matches_torch():
  torch = pytest.importorskip("torch")
  for n in (0, 1, 2, 10, 277, 1043, 20000):
    expected = torch.randperm(
        n, generator=torch.Generator().manual_seed(42)).numpy()
    np.testing.assert_array_equal(splits.torch_randperm(n, 42), expected)
  expected = torch.randperm(50, generator=torch.Generator().manual_seed(7))
  np.testing.assert_array_equal(splits.torch_randperm(50, 7), expected.numpy())


def test_torch_randperm_is_a_known_permutation():
  # torch.randperm(10, generator=Generator().manual_seed(42)) on CPU.
  np.testing.assert_array_equal(splits.torch_randperm(10),
                                [2, 6, 1, 8, 4, 5, 0, 9, 3, 7])


def _positions(protocol, split, n):
  sel = protocol.selection(split, n)
  return np.arange(n) if sel.positions is None else sel.positions


def test_small_protocol_sizes_disjoint_deterministic():
  p = splits.Protocol(splits.SMALL, {"train": "train",
                                     "validation": "validation"})
  assert p.raw_split_of("train") == "train"
  assert p.raw_split_of("test") == "validation"
  val = _positions(p, "validation", 277)
  test = _positions(p, "test", 277)
  assert (len(val), len(test)) == (138, 139)
  assert not set(val) & set(test)
  assert sorted(np.concatenate([val, test])) == list(range(277))
  assert p.selection("train", 2490).positions is None
  np.testing.assert_array_equal(val, _positions(p, "validation", 277))
  np.testing.assert_array_equal(val, splits.torch_randperm(277)[:138])


def test_large_protocol_sizes_disjoint_and_cap():
  p = splits.Protocol(splits.LARGE, {"train": "train", "test": "test"},
                      train_cap=3000)
  train = _positions(p, "train", 5000)
  val = _positions(p, "validation", 5000)
  assert len(val) == 1000 and len(train) == 3000
  assert not set(train) & set(val)
  np.testing.assert_array_equal(train, splits.torch_randperm(5000)[1000:4000])
  assert p.selection("test", 812).positions is None
  assert p.raw_split_of("validation") == "train"
  with pytest.raises(ValueError, match="holds out 1000"):
    p.selection("train", 900)


def test_official_protocol_and_errors():
  p = splits.Protocol(splits.OFFICIAL, {"train": "train",
                                        "validation": "validation_mismatched",
                                        "test": "validation_matched"})
  assert p.task_splits == ("train", "validation", "test")
  assert p.selection("test", 10) == splits.Selection("validation_matched")
  with pytest.raises(ValueError, match="not one of"):
    p.selection("dev", 10)
  with pytest.raises(ValueError, match="lacks"):
    splits.Protocol(splits.LARGE, {"train": "train"})
  with pytest.raises(ValueError, match="kind"):
    splits.Protocol("medium", {})


def test_k_shot_per_class():
  labels = [0] * 50 + [1] * 30 + [2] * 20
  idx = splits.k_shot_positions(labels, 4, seed=3)
  got = [labels[i] for i in idx]
  assert sorted(got) == [0] * 4 + [1] * 4 + [2] * 4
  assert len(set(idx)) == 12
  np.testing.assert_array_equal(idx, splits.k_shot_positions(labels, 4, 3))
  assert not np.array_equal(idx, splits.k_shot_positions(labels, 4, 4))
  with pytest.raises(ValueError, match="too few"):
    splits.k_shot_positions([0] * 10 + [1], 4, 0)


def _dept_reference(labels, k, seed):
  """DePT train.py's k-shot loop, transcribed."""
  classes = {c: 0 for c in sorted(set(labels))}
  per = k // len(classes)
  order = np.random.default_rng(seed).permutation(len(labels))
  picked = []
  for i, data in enumerate(order):
    if sum(classes.values()) == k:
      break
    label = labels[data]
    if classes[label] < per or sum(classes.values()) == k - 1:
      classes[label] += 1
      picked.append(i)
  return order[picked]


def test_k_shot_dept_mode_matches_reference_loop():
  rng = np.random.default_rng(0)
  for k, n_classes in ((4, 2), (16, 3), (32, 2)):
    labels = list(rng.integers(0, n_classes, 300))
    idx = splits.k_shot_positions(labels, k, seed=42, mode="dept")
    np.testing.assert_array_equal(idx, _dept_reference(labels, k, 42))
    assert len(idx) == k


def test_k_shot_dept_mode_stalls_like_dept():
  labels = [0, 1, 2] * 40
  idx = splits.k_shot_positions(labels, 32, seed=0, mode="dept")
  assert len(idx) == 30  # 10 per class; DePT's open slot never opens.
  assert len(splits.k_shot_positions(labels, 16, seed=0, mode="dept")) == 16


def test_k_shot_dept_hand_example():
  # Shuffle order of default_rng(0) over 6 items, then DePT's greedy loop.
  labels = ["a", "a", "a", "b", "b", "b"]
  order = np.random.default_rng(0).permutation(6)
  idx = splits.k_shot_positions(labels, 2, seed=0, mode="dept")
  first_a = next(i for i in order if labels[i] == "a")
  first_b = next(i for i in order if labels[i] == "b")
  assert sorted(idx) == sorted([first_a, first_b])


# ------------------------------------------------- ProtocolSource, local files


def _write_qnli(root, n_train, n_dev):
  d = os.path.join(root, "glue", "qnli")
  os.makedirs(d)
  for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
    with open(os.path.join(d, name), "w") as f:
      f.write("index\tquestion\tsentence\tlabel\n")
      for i in range(n):
        label = "entailment" if i % 3 else "not_entailment"
        f.write(f"{i}\tq{name[0]}{i}?\ts{i}.\t{label}\n")


def _questions(source, split):
  return [ex["question"].decode() for ex in tfds.as_numpy(
      source.get_dataset(split))]


def test_protocol_source_large_dataset_local(tmp_path):
  _write_qnli(str(tmp_path), 1300, 30)
  sources.configure("local", str(tmp_path))
  src = splits.ProtocolSource("glue/qnli", splits.Protocol(
      splits.LARGE, {"train": "train", "test": "validation"}), task_name="t")
  train, val, test = (_questions(src, s) for s in splits.TASK_SPLITS)
  assert (len(train), len(val), len(test)) == (300, 1000, 30)
  assert not set(train) & set(val)
  assert set(train) | set(val) == {f"qt{i}?" for i in range(1300)}
  assert test == [f"qd{i}?" for i in range(30)]
  expected_val = {f"qt{i}?" for i in splits.torch_randperm(1300)[:1000]}
  assert set(val) == expected_val
  assert _questions(src, "validation") == val  # deterministic
  assert src.num_input_examples("train") == 300


def test_protocol_source_few_shot(tmp_path):
  _write_qnli(str(tmp_path), 1100, 10)
  sources.configure("local", str(tmp_path))
  protocol = splits.Protocol(splits.LARGE, {"train": "train",
                                            "test": "validation"})
  src = splits.ProtocolSource("glue/qnli", protocol,
                              splits.FewShot(4, seed=1), task_name="t")
  exs = list(tfds.as_numpy(src.get_dataset("train")))
  assert sorted(int(e["label"]) for e in exs) == [0] * 4 + [1] * 4
  full_train = set(_questions(splits.ProtocolSource("glue/qnli", protocol),
                              "train"))
  assert {e["question"].decode() for e in exs} <= full_train
  assert len(_questions(src, "validation")) == 1000


def test_protocol_source_small_dataset_real_cb(shared_data):
  sources.configure("local", str(shared_data))
  src = splits.ProtocolSource("super_glue/cb", splits.Protocol(
      splits.SMALL, {"train": "train", "validation": "validation"}))
  train = list(tfds.as_numpy(src.get_dataset("train")))
  val = [int(e["idx"]) for e in tfds.as_numpy(src.get_dataset("validation"))]
  test = [int(e["idx"]) for e in tfds.as_numpy(src.get_dataset("test"))]
  assert (len(train), len(val), len(test)) == (250, 28, 28)
  assert not set(val) & set(test) and set(val) | set(test) == set(range(56))
  assert set(val) == set(splits.torch_randperm(56)[:28].tolist())


def test_protocol_source_tfds_mock_recovers_canonical_order():
  src = splits.ProtocolSource("glue/rte", splits.Protocol(
      splits.SMALL, {"train": "train", "validation": "validation"}))
  sources.configure("tfds")
  with tfds.testing.mock_data(num_examples=40):
    raw = [int(e["idx"]) for e in tfds.as_numpy(
        sources.read_raw(src.raw, "validation"))]
    val = [int(e["idx"]) for e in tfds.as_numpy(src.get_dataset("validation"))]
    test = [int(e["idx"]) for e in tfds.as_numpy(src.get_dataset("test"))]
  assert (len(val), len(test)) == (20, 20)
  # Canonical position = rank of idx (stable); the protocol's first half.
  order = np.argsort(np.asarray(raw), kind="stable")
  expected = [raw[i] for i in order[splits.torch_randperm(40)[:20]]]
  assert sorted(val) == sorted(expected)
  assert sorted(val + test) == sorted(raw)


def test_protocol_source_rejects_unknown_split():
  src = splits.ProtocolSource("glue/rte", splits.Protocol(
      splits.OFFICIAL, {"validation": "validation"}), task_name="x")
  with pytest.raises(ValueError, match="has no split 'train'"):
    src.selection("train")
  with pytest.raises(ValueError, match="lacks"):
    splits.ProtocolSource("glue/rte", splits.Protocol(
        splits.OFFICIAL, {"test": "test_matched"}), task_name="x")
