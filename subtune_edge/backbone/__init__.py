"""A timm model seen as stem -> ordered tunable units -> neck -> pool -> classifier.

SubTuning chooses among *units* (residual blocks, transformer blocks, ...), so every other part
of the toolkit needs one answer to "what are the units of this model and how do I run them one
after another". Each supported family has a small adapter (:mod:`.families`) that answers it; running the
parts in sequence reproduces ``model(x)`` exactly in eval mode.
"""

from .families import FAMILIES, Family, families_where, family_of, get_family, register_family, supported_families
from .model import Backbone, create_backbone, hash_tensors, load_backbone, split_model
from .spec import MODEL_ARGS, BackboneSpec, check_model_args, model_args_for_input

__all__ = ["FAMILIES", "Family", "families_where", "family_of", "get_family", "register_family", "MODEL_ARGS",
           "Backbone", "BackboneSpec", "check_model_args", "create_backbone", "hash_tensors", "load_backbone",
           "model_args_for_input", "split_model", "supported_families"]
