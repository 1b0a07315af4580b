"""grurt: a small, fast CPU inference runtime for GRU networks.

    import grurt
    model = grurt.load("model.npz")      # or .onnx, .keras, .h5
    y = model.run(seq)                   # seq: (T, features) or (batch, T, features)
"""
__version__ = "0.1.0"

from .errors import GrurtError, InputError, ModelFormatError, UnsupportedModelError
from .export import from_keras, from_torch
from .formats import load, save
from .model import Model
from .spec import ModelSpec

__all__ = ["load", "save", "from_torch", "from_keras", "Model", "ModelSpec", "GrurtError", "InputError",
           "ModelFormatError", "UnsupportedModelError", "__version__"]
