"""grurt: a small, fast CPU inference runtime for GRU networks.

    import grurt
    model = grurt.load("model.npz")      # or .onnx, .keras, .h5; or grurt.from_torch(module, example_input)
    y = model.run(seq)                   # seq: (T, features) or (batch, T, features)
"""
from . import layers, reference
from ._version import __version__
from .errors import GrurtError, InputError, ModelFormatError, UnsupportedModelError
from .formats import load, save
from .importers.keras import from_keras
from .importers.state_dict import from_state_dict
from .importers.torch import from_torch
from .model import Model
from .tensor_model import TensorModel
from .session import InferenceSession
from .graph import Graph
from .spec import ModelSpec

__all__ = ["load", "save", "from_torch", "from_keras", "from_state_dict", "layers", "Model", "InferenceSession", "Graph", "ModelSpec", "GrurtError", "InputError",
           "ModelFormatError", "UnsupportedModelError", "reference", "__version__"]
