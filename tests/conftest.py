"""Test setup: 8 simulated CPU devices, set before jax is imported."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tiny models: compile time dominates, so skip most XLA optimisation passes
# (as Flax's own CI does). Comparisons are between runs under the same flag.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402

from ptuning_jax import cli  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """`../shared/data`, or skip where this clone has none beside it."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} is absent (a user's clone); this test needs the "
                "real GLUE/SuperGLUE files and the T5 vocab from shared/data.")
  return SHARED_DATA


@pytest.fixture(scope="session")
def t5_vocab_path(shared_data) -> pathlib.Path:
  path = shared_data / "vocab" / "t5_spiece.model"
  if not path.exists():
    pytest.skip(f"{path} is absent.")
  return path



@pytest.fixture(scope="session")
def byte_backbone(tmp_path_factory) -> str:
  """`testing.byte_config()`'s random T5 over the byte vocabulary (the
  synthetic seqio tasks'), saved in the Hugging Face layout."""
  from ptuning_jax.backbones.hf import t5 as hf_t5  # pylint: disable=g-import-not-at-top
  from ptuning_jax import testing  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("byte_backbone"))
  config = testing.byte_config()
  hf_t5.save_checkpoint(testing.init_params(config, seed=0), config, path)
  return path


@pytest.fixture(scope="session")
def glue_world(tmp_path_factory):
  """Tiny official-layout RTE / COPA / STS-B files and a random tiny BERT
  checkpoint with its WordPiece tokenizer.json (`testing`'s GLUE world)."""
  pytest.importorskip("tokenizers")
  from ptuning_jax import testing  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("glue_world")
  return {"data": testing.write_glue_files(str(root / "data")),
          "backbone": testing.write_tiny_bert_checkpoint(str(root / "bert")),
          "root": root}


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
  """(directory, torch model) of a random BERT pretraining layout
  (`testing.make_hf_bert`); needs torch and transformers."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from ptuning_jax import testing  # pylint: disable=g-import-not-at-top
  return testing.make_hf_bert(tmp_path_factory.mktemp("tiny_bert"), "bert")


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory):
  """(directory, torch model) of a random RoBERTa MLM layout."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from ptuning_jax import testing  # pylint: disable=g-import-not-at-top
  return testing.make_hf_bert(tmp_path_factory.mktemp("tiny_roberta"), "roberta")


# ---------------------- optional extras: skip, never fail ----------------------
# The extra (setup.py) that installs each optional module a test may need:
# the CLI's table, which also names the extra in its "needs the ... extra" line.
EXTRA_OF = {module: extra for extra, (_, modules) in cli.EXTRAS.items()
            for module in modules}


def _installed(module: str) -> bool:
  from ptuning_jax import testing  # pylint: disable=g-import-not-at-top
  return testing.installed(module, REPO)


def _skip_reason(module: str, what: str) -> str:
  return (f"{what} needs {module}, which is not installed (pip install -e "
          f"\".[{EXTRA_OF.get(module, 'test')}]\").")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  """`@pytest.mark.needs("tensorflow", "seqio")`: skip unless those are installed."""
  for marker in item.iter_markers("needs"):
    for module in marker.args:
      if not _installed(module):
        pytest.skip(_skip_reason(module, item.name))


@pytest.fixture
def gin_imports():
  """`gin_imports(path)` skips the test when a module that the gin file, or a
  file it includes, imports needs an optional extra that is not installed."""

  def check(path: str) -> None:
    text = (REPO / path).read_text()
    for include in re.findall(r"^include\s+['\"](.+?)['\"]", text, re.M):
      check(include)
    for package, name in re.findall(r"^from\s+(\S+)\s+import\s+(\w+)", text, re.M):
      if package == "__gin__":
        continue
      try:  # `from a.b import c` registers a.b.c when it is a module
        module = f"{package}.{name}" if importlib.util.find_spec(f"{package}.{name}") else package
        importlib.import_module(module)
      except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in EXTRA_OF or _installed(top):
          raise
        pytest.skip(_skip_reason(top, f"{path} (importing {package}.{name})"))

  return check
