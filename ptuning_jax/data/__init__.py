"""Where data comes from: TF-free readers, metrics, pipelines and vocabularies.

`ptuning_jax.data.seqio` (SeqIO tasks and mixtures) is the only place that
imports TensorFlow; it needs the `data` extra.
"""
