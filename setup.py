"""ptuning_jax: prompt tuning of frozen pretrained models in JAX/Flax."""
import setuptools

CORE = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "chex>=0.1.92",
    "gin-config>=0.5.0",
    "sentencepiece>=0.2.3",
    "numpy>=2.0",
    "safetensors>=0.4",
    "tensorboardX>=2.6",
    "tqdm",
]
DATA = [
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "importlib_resources",
    "clu",
    "pyglove",
    "editdistance",
    "scipy",
    "scikit-learn",
]
# torch is pinned exactly: a CPU build of 2.13.0 is available offline; any
# other spec pulls a multi-GB CUDA build.
TORCH = ["torch==2.13.0", "transformers>=5.0", "peft", "tokenizers"]
TEST = ["pytest", "pytest-xdist"] + DATA + TORCH
NOTEBOOKS = ["jupyter", "matplotlib"]

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
        "test": TEST,
        "notebooks": NOTEBOOKS,
        "bert": ["tokenizers", "matplotlib"],
    },
    entry_points={"console_scripts": ["ptuning-jax=ptuning_jax.cli:main"]},
)
