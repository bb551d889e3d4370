"""SeqIO tasks, mixtures, sources and vocabularies: the only TensorFlow users.

Needs the `data` extra. Nothing here changes global state at import; a
`seqio_data.SeqioData` keeps TensorFlow off accelerators when it is built
(`keep_tensorflow_on_cpu`), so TF never competes with JAX for GPU memory.
"""
