"""Keras models → grurt: :func:`from_keras`, :func:`load_keras`. The one place that knows Keras's conventions.

See docs/keras.md. Three sources meet in one translation. The ``.keras`` archive (Keras 3,
and Keras ≥ 2.13) and the legacy HDF5 file (Keras 2 and 3) are read with pyfive alone (a
pure-Python HDF5 reader: libhdf5 is not safe on hostile bytes), without importing keras or tensorflow; :func:`from_keras` reads a live model. Each produces
the same triple:

* the model config, ``{"class_name": ..., "config": ...}`` as Keras serialises it;
* each layer's weights keyed by layer name, in ``layer.get_weights()`` order;
* the Keras version that saved it (``hard_sigmoid`` differs between Keras 2 and 3);

and :func:`translate` turns that into a :class:`~grurt.spec.ModelSpec` (:func:`spec_from_keras`), or
a :class:`~grurt.graph.Graph` for a functional model that is no simple chain (:func:`graph_from_keras`).

=========================  ===============================  =========================  ===========================
                           Keras 3                          Keras 2 / tf.keras         grurt (:mod:`grurt.spec`)
=========================  ===============================  =========================  ===========================
GRU gate order             z, r, h                          z, r, h                    z, r, h (unchanged)
GRU weights                ``kernel`` (I, 3H),              same                       transposed: ``W`` (3H, I),
                           ``recurrent_kernel`` (H, 3H)                                ``R`` (3H, H)
reset position             ``reset_after``, default True    tf.keras 2: True;          ``linear_before_reset``
                                                            Keras ≤ 2.2: False
GRU bias                   (2, 3H) [input; recurrent] with  same                       ``B`` (6H): the two rows, or
                           ``reset_after``, else (3H,)                                 [bias, 0]
gate activation            ``recurrent_activation``,        sigmoid (Keras ≤ 2.2.5:    ``gate_activation``
                           default sigmoid                  hard_sigmoid)
candidate activation       ``activation``, default tanh     same                       ``candidate_activation``
``hard_sigmoid``           clip(x/6 + 0.5, 0, 1)            clip(0.2·x + 0.5, 0, 1)    α = 1/6 or 0.2, β = 0.5
``leaky_relu``             negative slope 0.2               same                       α = 0.2
``go_backwards``           returns the sequence in          same                       reverse GRU + ``Reverse``
                           reversed time order
``Bidirectional``          flips the backward output        same                       bidirectional GRU (concat)
                           back; ``merge_mode`` concat                                 + ``Merge``; None refused
                           (default), sum, ave, mul, None
``Masking``                all-equal ``mask_value`` steps   same                       ``mask_value`` (first), a
                           are skipped, state carried;                                 ``Masking`` node (else); GRU
                           previous output repeated (a                                 and GlobalPool nodes read the
                           Bidirectional returning                                     mask (grurt.graph.Masking)
                           sequences: zeros)
functional ``inbound_nodes`` ``{args, kwargs}``; masks       ``[[layer, node, tensor,   both; an RNN's node lists its
                           recorded as ops                  kwargs], ...]``            sequence, then its states
merge of masked inputs     OR; none if one has none         AND of those there are     a shared mask; else refused
``Dense``                  ``kernel`` (I, out), ``bias``    same                       ``W`` (out, I) transposed
``BatchNormalization``     epsilon 1e-3; [γ, β, mean, var]  same                       ``Scale``
                           (γ/β absent without
                           ``scale``/``center``)
``Normalization``          (x − mean) / max(√var, 1e-7)     same                       ``Scale``
input layout               (B, T, I)                        (B, T, I)                  (B, T, I)
``Embedding``              ``embeddings`` (V, E);           same                       ``Embedding`` (first layer
                           ``mask_zero``: id 0 masks                                   only; the model takes ids);
                                                                                       ``mask_value`` 0
``LayerNormalization``     epsilon 1e-3 over ``axis``;      same                       ``LayerNorm`` (last axis
                           [γ, β] (absent without                                      only); ``rms_scaling``
                           ``scale``/``center``)                                       refused
``UnitNormalization``      x / max(‖x‖, 1e-12) (≥ 3.6)      x / √max(Σx², 1e-12)       ``UnitNorm`` ε = 1e-12,
                                                            (Keras 3 < 3.6 too)        or 1e-6 = √1e-12
``GlobalAveragePooling1D`` mean over the unmasked steps     same                       ``GlobalPool`` (average over
                                                                                       valid steps)
``GlobalMaxPooling1D``     max over all steps (no mask)     same                       ``GlobalPool`` (max over
                                                                                       all steps; within
                                                                                       ``lengths=`` if given)
``Flatten`` of (B, T, F)   (B, T·F); T from the input       same                       ``Flatten(T)``: the model
                           shape                                                       runs only with that T
``Conv1D``                 (B, T, C); ``kernel`` (k,        same                       ``Conv1D`` W (out, in/g, k)
                           in/groups, out); padding                                    transposed; padding (0, 0),
                           ``valid``, ``same`` (odd frame                              ((k−1)d // 2, rest),
                           on the right), ``causal``                                   ((k−1)d, 0); same with
                           ((k−1)·d on the left)                                       stride > 1: ``same_upper``
``BatchNormalization``     after a Conv1D or Dense without  same                       folded into its weights
after Conv1D / Dense       activation
``MaxPooling1D``,          ``pool_size``, ``strides``       same                       ``Pool1D``; average never
``AveragePooling1D``       (default pool_size); ``same``                               counts padding
                           averages exclude the padding
``ZeroPadding1D``          ``padding`` int or (left, right) same                       ``ZeroPad1D`` (folded into
                                                                                       a Conv1D after it)
``ReLU``, ``LeakyReLU``,   ``negative_slope``               ``alpha`` (LeakyReLU);     ``Activation``: relu, clip,
``ELU``, ``Softmax``                                        ``ThresholdedReLU``        leaky_relu, thresholded_relu,
                                                                                       elu, softmax
``PReLU``                  alpha: one sample's shape, 1     same                       ``PReLU`` graph layer, or
                           on ``shared_axes``                                          leaky_relu (one slope)
``RepeatVector``,          (B, F) → (B, n, F); vector →     same                       graph layers ``Repeat``,
``Reshape``,               (T, F); (B, T, F) cropped                                   ``Unflatten`` (or Flatten),
``Cropping1D``                                                                         ``Crop``
=========================  ===============================  =========================  ===========================

Dropout, SpatialDropout1D, GaussianNoise, GaussianDropout and AlphaDropout do nothing at
inference.

The package: :mod:`.files` reads ``.keras`` archives and HDF5 files (pyfive, size limits),
:mod:`.layers` translates the config and weights into grurt layers, :mod:`.graph` a functional
model's structure into a graph of them.
"""
from __future__ import annotations

import sys

import numpy as np

from ...errors import GrurtError, ModelFormatError, UnsupportedModelError
from ...model import Model
from ...graph import Graph
from ..scalers import with_scalers
from .files import HDF5_SIGNATURE, read_keras  # noqa: F401
from .graph import graph_from_keras
from .layers import (_chain, _major, batchnorm_affine, check_custom_layers, is_graph, keras_activation,  # noqa: F401
                     keras_dense, keras_gru_direction, spec_from_keras)



def from_keras(model, input_scaler=None, output_scaler=None, weights: str = "float32", custom_layers=None):
    """Convert a live Keras model (Keras 3 on any backend, or tf.keras 2) to a Model.

    The model is a Sequential or functional model of the layers listed in docs/keras.md; a
    functional model that is no simple chain (several inputs or outputs, branches, merges, a GRU's
    initial_state or returned state) becomes a graph whose inputs and outputs keep Keras's names.
    A model beyond grurt's fused layers (attention, 2-D front-ends, TimeDistributed of anything, ...)
    is lowered onto ONNX ops and becomes a :class:`~grurt.tensor_model.TensorModel` (:mod:`.lower`).
    ``input_scaler``/``output_scaler``: fitted scikit-learn MinMaxScaler or StandardScaler,
    folded in so that the Model takes raw input and returns outputs in real units (chains only).
    ``weights`` ("float32", "bf16", "int8"): how the GRU weights are stored, see :mod:`grurt.precision`.
    ``custom_layers``: {class name: what it computes} for layer classes of your own, each a
    function ``(config, weights) -> [grurt layers]`` (the layer's config dict and its
    ``get_weights()``; the grurt layers apply in order to the layer's one input) or that list
    itself (``[]``: the identity). See docs/keras.md, "Layers of your own".
    """
    config, arrays, version = _live_triple(model)
    check_custom_layers(custom_layers)
    try:
        spec = translate(config, arrays, version, custom_layers)
    except UnsupportedModelError as refused:
        return _lowered(config, arrays, version, refused, input_scaler, output_scaler).with_weights(weights)
    return Model(_scaled(spec, input_scaler, output_scaler), weights)


def live_keras_spec(model, custom_layers=None):
    """The :class:`~grurt.spec.ModelSpec` (a chain) or :class:`~grurt.graph.Graph` of a live Keras
    model (what :func:`from_keras` runs when grurt's fused layers cover it)."""
    return translate(*_live_triple(model), custom_layers)


def _live_triple(model):
    """The (config, weights by layer name, Keras version) triple of a live model, as the files give it."""
    if not hasattr(model, "layers") or not hasattr(model, "get_config"):
        raise UnsupportedModelError(f"expected a Keras Sequential or functional model, got {type(model).__name__}")
    try:
        config = model.get_config()
    except NotImplementedError:
        raise UnsupportedModelError(f"{type(model).__name__} has no config (a subclassed model?); "
                                    "grurt reads Sequential and functional models") from None
    # the same (config, weights, version) triple the file readers produce
    weights = {layer.name: _layer_weights(layer) for layer in model.layers}
    package = sys.modules.get(type(model).__module__.partition(".")[0])
    return {"class_name": type(model).__name__, "config": config}, weights, getattr(package, "__version__", "3")


def _lowered(config, weights, version, refused, input_scaler=None, output_scaler=None):
    """The model lowered onto ONNX ops (:mod:`.lower`) after the fused layers refused it (``refused``)."""
    from .lower import tensor_model_from_keras

    if input_scaler is not None or output_scaler is not None:
        raise UnsupportedModelError(f"{refused} (input_scaler/output_scaler fold into grurt's fused layers only)")
    try:
        return tensor_model_from_keras(config, weights, version)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{exc}; grurt's fused layers refused it too: {refused}") from None


def _layer_weights(layer) -> list:
    """``layer.get_weights()``, read without ``np.array(tensor)`` on Keras's torch backend: torch's
    ``Tensor.__array__`` takes no ``copy`` keyword, for which NumPy 2 warns once per variable."""
    values = []
    for variable in layer.weights:
        tensor = getattr(variable, "value", None)      # Keras 3: the backend's tensor
        values.append(tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(variable.numpy()))
    return values


def translate(model_config: dict, weights: dict, keras_version: str, custom_layers=None):
    """A Keras model config and its weights → a ModelSpec when the model is a chain of layers, else a Graph."""
    if is_graph(model_config):
        return graph_from_keras(model_config, weights, keras_version, custom_layers)
    return spec_from_keras(model_config, weights, keras_version, custom_layers)


def _scaled(spec, input_scaler, output_scaler):
    if isinstance(spec, Graph):
        if input_scaler is not None or output_scaler is not None:
            raise UnsupportedModelError(
                f"input_scaler/output_scaler fold into models that are a chain of layers; this Keras model is a "
                f"graph (inputs {list(spec.input_names)}, outputs {list(spec.output_names)}): scale its inputs "
                "and outputs outside grurt")
        return spec
    return with_scalers(spec, input_scaler, output_scaler)


def load_keras(path, input_scaler=None, output_scaler=None, custom_layers=None):
    """Load a ``.keras`` or ``.h5`` Keras model file as a Model (or, beyond the fused layers, a
    TensorModel); scalers and custom_layers as in :func:`grurt.from_keras`."""
    check_custom_layers(custom_layers)
    config, weights, version = read_keras(path)
    try:
        try:
            spec = translate(config, weights, version, custom_layers)
        except UnsupportedModelError as refused:
            return _lowered(config, weights, version, refused, input_scaler, output_scaler)
    except GrurtError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as exc:  # a hostile config
        raise ModelFormatError(f"{path}: malformed model config ({type(exc).__name__}: {exc})") from None
    return Model(_scaled(spec, input_scaler, output_scaler))
