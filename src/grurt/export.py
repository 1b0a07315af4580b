"""Live framework objects → grurt models. Frameworks are imported lazily."""
from __future__ import annotations

import sys

import numpy as np

from .convert import torch_gru_direction, with_scalers
from .errors import UnsupportedModelError
from .model import Model
from .spec import GRU, Activation, Dense, LastStep, ModelSpec, activation

# torch.nn activation modules -> (grurt kind, attribute holding alpha or None)
_TORCH_ACTIVATIONS = {
    "Sigmoid": ("sigmoid", None), "Tanh": ("tanh", None), "ReLU": ("relu", None),
    "Softsign": ("softsign", None), "ELU": ("elu", "alpha"), "LeakyReLU": ("leaky_relu", "negative_slope"),
    "Identity": ("linear", None), "Softmax": ("softmax", None), "Hardsigmoid": ("hard_sigmoid", None),
}
_TORCH_NO_OPS = ("Dropout", "Flatten")


def _numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy()


def _torch_gru(module) -> list:
    if getattr(module, "proj_size", 0):
        raise UnsupportedModelError(f"torch.nn.GRU with proj_size={module.proj_size} is not supported")
    directions = 2 if module.bidirectional else 1
    layers = []
    for k in range(module.num_layers):
        per_direction = []
        for suffix in ("", "_reverse")[:directions]:
            name = f"l{k}{suffix}"
            per_direction.append(torch_gru_direction(
                _numpy(getattr(module, "weight_ih_" + name)), _numpy(getattr(module, "weight_hh_" + name)),
                _numpy(getattr(module, "bias_ih_" + name)) if module.bias else None,
                _numpy(getattr(module, "bias_hh_" + name)) if module.bias else None))
        W, R, B = (np.stack(parts) for parts in zip(*per_direction))
        layers.append(GRU(W=W, R=R, B=B, direction="bidirectional" if directions == 2 else "forward",
                          linear_before_reset=True))
    return layers


def _torch_layer(module, index, has_time: bool) -> list:
    """The canonical layers of one torch module; ``has_time``: its input still has a time axis."""
    kind = type(module).__name__
    if kind == "GRU":
        return _torch_gru(module)
    if kind == "Linear":
        bias = _numpy(module.bias) if module.bias is not None else np.zeros(module.out_features, np.float32)
        return [Dense(W=_numpy(module.weight), b=bias)]
    if kind in _TORCH_ACTIVATIONS:
        name, alpha_attr = _TORCH_ACTIVATIONS[kind]
        # dim=None means dim 0 (the batch!) on (B, T, F) and dim 1 on (B, F) in torch
        if kind == "Softmax" and module.dim not in ((-1, 2) if has_time else (-1, 1, None)):
            raise UnsupportedModelError(f"module {index} (Softmax): only softmax over the last axis is supported, "
                                        f"got dim={module.dim} on a {'(B, T, F)' if has_time else '(B, F)'} input")
        if kind == "Hardsigmoid":  # relu6(x + 3) / 6
            return [Activation(activation("hard_sigmoid", 1 / 6, 0.5))]
        alpha = getattr(module, alpha_attr) if alpha_attr else None
        return [Activation(activation(name, alpha))]
    if kind == "Flatten" and has_time:
        raise UnsupportedModelError(f"module {index} (Flatten): flattening a sequence is not supported")
    if kind in _TORCH_NO_OPS:
        return []
    raise UnsupportedModelError(
        f"module {index} ({kind}): unsupported torch module; grurt converts GRU, Linear, "
        f"{', '.join(_TORCH_ACTIVATIONS)}, Dropout and Flatten")


def from_torch(module, last_step: bool = False, input_scaler=None, output_scaler=None) -> Model:
    """Convert ``torch.nn.GRU``/``Linear``/activations, alone, in ``nn.Sequential`` or a list, to a Model.

    The model takes batch-first input (B, T, I) whatever ``batch_first`` says. A GRU passes
    its output sequence on (``output`` of ``nn.GRU``); ``last_step=True`` keeps only the
    last time step after the last GRU, as ``output[:, -1]`` does. ``input_scaler`` and
    ``output_scaler`` fold fitted scikit-learn scalers in, as in :func:`from_keras`.
    """
    import torch.nn

    if isinstance(module, torch.nn.Sequential):
        modules = list(module)
    elif isinstance(module, (list, tuple)):
        modules = list(module)
    else:
        modules = [module]
    for index, child in enumerate(modules):
        if not isinstance(child, torch.nn.Module):
            raise UnsupportedModelError(f"module {index}: expected a torch.nn.Module, got {type(child).__name__}")
    last_gru = max([i for i, child in enumerate(modules) if isinstance(child, torch.nn.GRU)], default=None)
    layers = []
    for index, child in enumerate(modules):
        layers.extend(_torch_layer(child, index, has_time=not (last_step and last_gru is not None and index > last_gru)))
        if last_step and index == last_gru:
            layers.append(LastStep())
    if last_gru is None:
        raise UnsupportedModelError("the torch model contains no nn.GRU")
    spec = ModelSpec(input_size=_first_input(layers), layers=tuple(layers))
    return Model(with_scalers(spec, input_scaler, output_scaler))


def _first_input(layers) -> int:
    first = layers[0]
    if isinstance(first, (GRU, Dense)):
        return first.input_size
    raise UnsupportedModelError("the first module must be nn.GRU or nn.Linear so that the input size is known")


def from_keras(model, input_scaler=None, output_scaler=None) -> Model:
    """Convert a live Keras model (Keras 3 on any backend, or tf.keras 2) to a Model.

    The model is a Sequential or functional chain of the layers listed in docs/keras.md.
    ``input_scaler``/``output_scaler``: fitted scikit-learn MinMaxScaler or StandardScaler,
    folded in so that the Model takes raw input and returns outputs in real units.
    """
    from .formats.keras import spec_from_keras

    if not hasattr(model, "layers") or not hasattr(model, "get_config"):
        raise UnsupportedModelError(f"expected a Keras Sequential or functional model, got {type(model).__name__}")
    try:
        config = model.get_config()
    except NotImplementedError:
        raise UnsupportedModelError(f"{type(model).__name__} has no config (a subclassed model?); "
                                    "grurt reads Sequential and functional models") from None
    # the same (config, weights, version) triple the file readers produce
    weights = {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers}
    package = sys.modules.get(type(model).__module__.partition(".")[0])
    spec = spec_from_keras({"class_name": type(model).__name__, "config": config}, weights,
                           getattr(package, "__version__", "3"))
    return Model(with_scalers(spec, input_scaler, output_scaler))
