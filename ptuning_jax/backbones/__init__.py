"""What is frozen: backbone families, their modules and checkpoint import/export."""
from ptuning_jax.backbones.backbone import Backbone
from ptuning_jax.backbones.backbone import BackboneSpec
from ptuning_jax.backbones.backbone import abstract
from ptuning_jax.backbones.backbone import frozen_shardings
from ptuning_jax.backbones.backbone import load
