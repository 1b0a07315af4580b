"""Live ``torch.nn`` modules → grurt: :func:`from_torch`. The one place that knows PyTorch's conventions.

==========================  ==========================================  ==========================================
                            PyTorch                                     grurt (:mod:`grurt.spec`)
==========================  ==========================================  ==========================================
GRU gate order              r, z, n                                     z, r, h: the first two blocks swap
reset position              always after the recurrent product          ``linear_before_reset=True``
GRU weights                 ``weight_ih_l{k}`` (3H, I),                 ``W`` (D, 3H, I), ``R`` (D, 3H, H);
                            ``weight_hh_l{k}`` (3H, H); ``_reverse``    direction 0 forward, 1 reverse
                            suffix for the backward direction
GRU biases                  two (3H,) vectors ``bias_ih_l{k}``,         ``B`` (D, 6H) = [input bias, recurrent
                            ``bias_hh_l{k}``; none with ``bias=False``  bias], zeros when there are none
GRU activations             sigmoid (gates), tanh (candidate), fixed    the defaults
``num_layers``              stacked layers in one module                one GRU layer each
``dropout``                 between layers, training only               ignored
``proj_size``               projects the output                         refused
input layout                (T, B, I), or (B, T, I) with batch_first    always (B, T, I)
``h_n``                     (L·D, B, H): layer 0 fwd, layer 0 bwd,      one (D, B, H) state per GRU layer
                            layer 1 fwd, ...
``Linear``                  ``weight`` (out, in), ``bias`` (out,)       ``Dense`` W (out, in), b (out,)
``Hardsigmoid``             relu6(x + 3) / 6 = clip(x/6 + 1/2, 0, 1)    ``hard_sigmoid`` α = 1/6, β = 0.5
``LeakyReLU``, ``ELU``      ``negative_slope`` (0.01), ``alpha`` (1.0)  α
``Softmax``                 ``dim=None`` is dim 0 (the batch!) on       only the last axis is accepted
                            (B, T, F), dim 1 on (B, F)
``Dropout``, ``Flatten``    no-ops at inference (Flatten of (B, F))     nothing
``GRUCell``                 one step ``h' = cell(x, h)``: gates r, z,   a forward GRU (``linear_before_reset``)
                            n, reset after; x (B, I), h (B, H)          returning its final state: run it on
                                                                        (B, 1, I) with ``initial_state=[h[None]]``,
                                                                        or stream it
``Embedding``               ``weight`` (num, dim); ``padding_idx``      ``Embedding`` (first module only): the
                            only affects training                       model takes ids (B, T)
``LayerNorm``               eps 1e-5 over ``normalized_shape``;         ``LayerNorm`` (last axis only);
                            ``elementwise_affine``, ``bias``            γ = 1, β = 0 when absent
``Conv1d``                  on (B, C, T); ``weight`` (out, in/groups,   ``Conv1D`` on (B, T, C): the same weight;
                            k); ``padding`` p (both sides), ``'same'``  padding (p, p), same: ((k−1)d // 2, the
                            (stride 1, odd frame on the right),         rest), valid: (0, 0); other padding
                            ``'valid'``; ``padding_mode`` zeros         modes refused
``BatchNorm1d``             eps 1e-5; running_mean/var, weight, bias    folded into a Conv1D/Dense before it,
                            (none when ``affine=False``)                else ``Scale``
``MaxPool1d``,              on (B, C, T); ``padding`` both sides;       ``Pool1D``; ``ceil_mode``, dilation and
``AvgPool1d``               ``count_include_pad=True`` by default       ``return_indices`` refused
``ConstantPad1d``,          pads the last axis (time in (B, C, T))      ``ZeroPad1D`` (value 0 only), folded
``ZeroPad1d``                                                           into a Conv1D after it
channels-first modules      applied to (B, C, T) in torch               grurt's (B, T, C) input: the transposes
                                                                        around them are implied
==========================  ==========================================  ==========================================

torch is imported lazily, by :func:`from_torch` itself.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedModelError
from ..graph import Graph
from ..model import Model
from ..tensor_graph import TensorGraph
from ..tensor_model import TensorModel
from ..spec import GRU, Activation, Conv1D, Dense, LastStep, ModelSpec, Pool1D, Scale, ZeroPad1D, activation
from ..spec import Embedding, LayerNorm
from ..spec import append_folded, batchnorm_affine
from .scalers import with_scalers

# torch.nn activation modules -> (grurt kind, attribute holding alpha or None)
_TORCH_ACTIVATIONS = {
    "Sigmoid": ("sigmoid", None), "Tanh": ("tanh", None), "ReLU": ("relu", None),
    "Softsign": ("softsign", None), "ELU": ("elu", "alpha"), "LeakyReLU": ("leaky_relu", "negative_slope"),
    "Identity": ("linear", None), "Softmax": ("softmax", None), "Hardsigmoid": ("hard_sigmoid", None),
}
_TORCH_NO_OPS = ("Dropout", "Flatten")


def _numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy()


def reorder_rzn_to_zrh(a: np.ndarray) -> np.ndarray:
    """Swap the first two gate blocks of a (3H, ...) array: PyTorch's r, z, n → z, r, h."""
    r, z, n = np.split(np.asarray(a), 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def torch_gru_direction(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One direction of a PyTorch GRU → (W [3H, I], R [3H, H], B [6H]) in grurt's order."""
    W = reorder_rzn_to_zrh(weight_ih)
    R = reorder_rzn_to_zrh(weight_hh)
    hidden3 = W.shape[0]
    Wb = np.zeros(hidden3, np.float32) if bias_ih is None else reorder_rzn_to_zrh(bias_ih)
    Rb = np.zeros(hidden3, np.float32) if bias_hh is None else reorder_rzn_to_zrh(bias_hh)
    return W, R, np.concatenate([Wb, Rb])


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
    if kind in _TORCH_MODULES_12:
        return _TORCH_MODULES_12[kind](module, index)
    if kind == "Flatten" and has_time:
        raise UnsupportedModelError(f"module {index} (Flatten): flattening a sequence is not supported")
    if kind in _TORCH_NO_OPS:
        return []
    if kind in _TORCH_TIME_MODULES:
        return _TORCH_TIME_MODULES[kind](module, f"module {index} ({kind})")
    raise UnsupportedModelError(
        f"module {index} ({kind}): unsupported torch module; grurt converts GRU, GRUCell, Linear, Embedding, "
        f"LayerNorm, {', '.join(_TORCH_ACTIVATIONS)}, Dropout, Flatten, {', '.join(_TORCH_TIME_MODULES)}; a module "
        "with its own forward converts with an example: grurt.from_torch(module, example_input)")


def from_torch(module, example_input=None, *, last_step: bool = False, input_scaler=None, output_scaler=None,
               weights: str = "float32") -> Model:
    """Convert a PyTorch module to a Model.

    **Without** ``example_input``: ``torch.nn.GRU``/``Linear``/activations and the other modules
    below, alone, in ``nn.Sequential`` or a list, are read directly from their weights. The model
    takes batch-first input (B, T, I) whatever ``batch_first`` says. A GRU passes its output
    sequence on (``output`` of ``nn.GRU``); ``last_step=True`` keeps only the last time step
    after the last GRU, as ``output[:, -1]`` does.

    **With** ``example_input`` (a tensor or array, or a tuple of them for a ``forward`` of several
    arguments): any module whose ``forward`` uses operations grurt supports — residual ``o + h``,
    ``torch.cat``, ``torch.flip``, gating products, several inputs and outputs, ``forward(x, h0)``
    returning ``(y, h_n)``. The module is traced by ``torch.onnx.export`` (TorchScript exporter,
    opset 17) into the ONNX importer (docs/onnx.md), with batch and time dynamic. The inputs
    take the names of ``forward``'s parameters; the outputs are named ``output`` (a tensor) or
    ``output_0``, ``output_1``, ... (a tuple). Sequences are batch first, (B, T, I), in grurt
    whatever the module takes; ``last_step`` does not apply (the forward says what it returns).
    A module that is one path keeps its states as ``run(initial_state=..., return_state=True)``
    (an ``h0`` argument then is ``initial_state``, as for ONNX files); a graph takes and gives
    them as named inputs and outputs, (L·D, B, H) as in torch. A learned h0, an ``nn.Parameter``
    (L·D, 1, H) expanded or repeated over the batch, becomes each GRU layer's ``initial_state``
    (docs/torch.md, "A learned initial state").
    A module beyond those layers (attention, broadcasting, reductions, 2-D convolutions, einsum,
    ...) becomes a :class:`grurt.tensor_model.TensorModel` of its ONNX ops, inputs and outputs as
    the module takes and returns them, each GRU with its wiring one ``grurt.Chain`` node where the graph
    allows (docs/onnx.md, "Graphs beyond the fused layers").

    ``input_scaler`` and ``output_scaler`` fold fitted scikit-learn scalers in, as in
    :func:`from_keras` (a model that is one chain only).

    A ``GRUCell`` is a GRU layer of one direction that returns its final state:
    ``model.run(x[:, None], initial_state=[h[None]])`` is ``cell(x, h)``, and a stream steps it.
    An ``Embedding`` first makes the model take integer ids (B, T).

    Channels-first modules (``Conv1d``, ``BatchNorm1d``, ``MaxPool1d``, ``AvgPool1d``,
    ``ConstantPad1d``, ``ZeroPad1d``) are read as applied to the (B, T, C) sequence with the
    transposes to and from PyTorch's (B, C, T) implied (docs/convolutions.md). A BatchNorm1d
    folds into the Conv1d or Linear before it, an activation into a Conv1d, padding into the
    Conv1d after it.

    ``weights`` ("float32", "bf16", "int8"): how the GRU weights are stored, see :mod:`grurt.precision`.
    """
    _check_modules(module)
    if example_input is None:
        return Model(spec_from_torch(module, last_step, input_scaler, output_scaler), weights)
    if last_step:
        raise UnsupportedModelError("last_step applies to modules converted without example_input; with one, "
                                    "the module's forward says which steps it returns")
    from .torch_export import graph_from_torch

    result = graph_from_torch(module, example_input)
    if isinstance(result, TensorGraph):
        if input_scaler is not None or output_scaler is not None:
            raise UnsupportedModelError("input_scaler/output_scaler fold into a model that is one chain of layers; "
                                        "this module runs as a general graph")
        return TensorModel(result).with_weights(weights)
    if input_scaler is not None or output_scaler is not None:
        if not result.chain:
            raise UnsupportedModelError("input_scaler/output_scaler fold into a model that is one chain of layers; "
                                        "this module is a graph")
        spec = with_scalers(result.spec, input_scaler, output_scaler)
        return Model(Graph.from_chain(spec, result.graph.input_names[0], result.graph.output_names[0]), weights)
    return Model(result.graph, weights)


def _check_modules(module) -> None:
    """Refuse, saying what to do instead, what from_torch cannot read: TorchScript modules (no Python
    forward to trace, no module types to read) and recurrent layers other than the GRU."""
    import torch

    other_recurrent = (torch.nn.LSTM, torch.nn.LSTMCell, torch.nn.RNN, torch.nn.RNNCell)
    for index, root in enumerate(module if isinstance(module, (list, tuple)) else [module]):
        if isinstance(root, torch.jit.ScriptModule):
            raise UnsupportedModelError(
                "from_torch takes the torch.nn.Module itself, not a TorchScript module (torch.jit.load, "
                "torch.jit.script): pass the original module (its class with load_state_dict), or its weights: "
                "grurt.from_state_dict(script_module.state_dict(), ...), or export it to ONNX and load that: "
                "torch.onnx.export(script_module, example_input, 'model.onnx', dynamo=False); "
                "grurt.load('model.onnx')")
        for name, child in (root.named_modules() if isinstance(root, torch.nn.Module) else ()):
            if isinstance(child, other_recurrent):
                kind = type(child).__name__
                where = name or (f"module {index}" if isinstance(module, (list, tuple)) else "the module")
                raise UnsupportedModelError(f"nn.{kind} is not supported: grurt runs GRUs (nn.GRU, nn.GRUCell); "
                                            f"{where} is an nn.{kind}")


def spec_from_torch(module, last_step: bool = False, input_scaler=None, output_scaler=None) -> ModelSpec:
    """The :class:`~grurt.spec.ModelSpec` :func:`from_torch` runs."""
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
    first_cell = min([i for i, child in enumerate(modules) if isinstance(child, torch.nn.GRUCell)], default=None)
    layers = []
    for index, child in enumerate(modules):
        has_time = not (last_step and last_gru is not None and index > last_gru)
        # BatchNorm1d folds into the Conv1d/Linear before it, ReLU & co. into a Conv1d, padding into a Conv1d
        append_folded(layers, _torch_layer(child, index, has_time=has_time and not (first_cell is not None
                                                                                    and index > first_cell)))
        if last_step and index == last_gru:
            layers.append(LastStep())
    if last_gru is None and first_cell is None:
        raise UnsupportedModelError("the torch model contains no nn.GRU or nn.GRUCell (a module with its own "
                                    "forward converts with an example: grurt.from_torch(module, example_input))")
    spec = ModelSpec(input_size=_first_input(layers), layers=tuple(layers))
    return with_scalers(spec, input_scaler, output_scaler)


def _first_input(layers):
    first = layers[0]
    if isinstance(first, (GRU, Dense, Conv1D)):
        return first.input_size
    if isinstance(first, Embedding):
        return None     # the model takes ids
    raise UnsupportedModelError("the first module must be nn.GRU, nn.GRUCell, nn.Linear, nn.Conv1d or nn.Embedding "
                                "so that the input size is known")


# ---- GRUCell, Embedding, LayerNorm (issue 12) ----

def _torch_gru_cell(module, index) -> list:
    W, R, B = torch_gru_direction(_numpy(module.weight_ih), _numpy(module.weight_hh),
                                  _numpy(module.bias_ih) if module.bias else None,
                                  _numpy(module.bias_hh) if module.bias else None)
    return [GRU(W=W[None], R=R[None], B=B[None], direction="forward", linear_before_reset=True,
                return_sequences=False)]


def _torch_embedding(module, index) -> list:
    if module.max_norm is not None:
        raise UnsupportedModelError(f"module {index} (Embedding): max_norm={module.max_norm} renormalises rows "
                                    "at lookup time; not supported")
    return [Embedding(_numpy(module.weight))]      # padding_idx only affects training


def _torch_layer_norm(module, index) -> list:
    shape = tuple(module.normalized_shape)
    if len(shape) != 1:
        raise UnsupportedModelError(f"module {index} (LayerNorm): normalized_shape={shape}; grurt normalises "
                                    "over the last axis (the features) only")
    ones, zeros = np.ones(shape, np.float32), np.zeros(shape, np.float32)
    gamma = _numpy(module.weight) if module.weight is not None else ones
    beta = _numpy(module.bias) if getattr(module, "bias", None) is not None else zeros
    return [LayerNorm(gamma, beta, module.eps)]


_TORCH_MODULES_12 = {"GRUCell": _torch_gru_cell, "Embedding": _torch_embedding, "LayerNorm": _torch_layer_norm}


# ---- channels-first modules over time (issue 12): Conv1d, BatchNorm1d, pooling, padding ----

def _one(value, what, where):
    """An int, or the single element of a 1-tuple (torch's ``_single`` attributes)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise UnsupportedModelError(f"{where}: {what}={value!r}; a 1-D layer takes one value")
        value = value[0]
    return int(value)


def _torch_conv1d(module, where):
    if module.padding_mode != "zeros":
        raise UnsupportedModelError(f"{where}: padding_mode={module.padding_mode!r} is not supported; grurt pads "
                                    "with zeros only")
    k, d = _one(module.kernel_size, "kernel_size", where), _one(module.dilation, "dilation", where)
    if module.padding == "valid":
        padding = (0, 0)
    elif module.padding == "same":       # torch: stride 1, the odd frame on the right
        total = d * (k - 1)
        padding = (total // 2, total - total // 2)
    else:
        p = _one(module.padding, "padding", where)
        padding = (p, p)
    bias = _numpy(module.bias) if module.bias is not None else np.zeros(module.out_channels, np.float32)
    return [Conv1D(W=_numpy(module.weight), b=bias, stride=_one(module.stride, "stride", where), dilation=d,
                   groups=module.groups, padding=padding)]


def _torch_batchnorm(module, where):
    if not module.track_running_stats or module.running_mean is None:
        raise UnsupportedModelError(f"{where}: track_running_stats=False normalises with each batch's statistics, "
                                    "even in eval mode; grurt needs running statistics")
    gamma = _numpy(module.weight) if module.affine else None
    beta = _numpy(module.bias) if module.affine else None
    a, c = batchnorm_affine(_numpy(module.running_mean), _numpy(module.running_var), module.eps, gamma, beta)
    return [Scale(a, c)]


def _torch_pool(module, where):
    kind = type(module).__name__
    if module.ceil_mode:
        raise UnsupportedModelError(f"{where}: ceil_mode=True is not supported")
    if kind == "MaxPool1d" and (_one(module.dilation, "dilation", where) != 1 or module.return_indices):
        raise UnsupportedModelError(f"{where}: dilation and return_indices are not supported")
    size = _one(module.kernel_size, "kernel_size", where)
    stride = size if module.stride is None else _one(module.stride, "stride", where)
    p = _one(module.padding, "padding", where)
    return [Pool1D("max" if kind == "MaxPool1d" else "average", size, stride, (p, p),
                   count_include_pad=kind == "AvgPool1d" and bool(module.count_include_pad))]


def _torch_pad(module, where):
    if float(getattr(module, "value", 0.0)) != 0.0:
        raise UnsupportedModelError(f"{where}: padding value {module.value} is not supported; grurt pads with zeros")
    padding = module.padding
    padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
    if len(padding) != 2:
        raise UnsupportedModelError(f"{where}: padding={module.padding!r}; grurt pads the time axis only")
    return [ZeroPad1D(*padding)]


_TORCH_TIME_MODULES = {"Conv1d": _torch_conv1d, "BatchNorm1d": _torch_batchnorm, "MaxPool1d": _torch_pool,
                       "AvgPool1d": _torch_pool, "ConstantPad1d": _torch_pad, "ZeroPad1d": _torch_pad}

