"""SeqIO tasks, vocabularies and data sources. Needs the `data` extra (TF).

TensorFlow only feeds the input pipeline here: it is kept off accelerators so
it never competes with JAX for GPU memory.
"""
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as _tf  # noqa: E402

try:
  _tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF already initialised its devices; nothing to hide now.
  pass
