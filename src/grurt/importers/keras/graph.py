"""Keras functional models that are graphs → :class:`grurt.graph.Graph` (docs/keras.md, "Functional models").

The structure is read from the model config alone (each layer's ``inbound_nodes``), so a live
model, a ``.keras`` archive and an ``.h5`` file go through the same code. Each call of a layer
(a layer called twice gives two nodes with the same weights) is translated by the per-layer
functions of :mod:`.layers`; merge layers, and the keras.ops operations that do the same
(``x + y``, ``keras.ops.concatenate``), become :class:`~grurt.graph.Combine` / :class:`~grurt.graph.Concat`
nodes, ``keras.ops.sigmoid`` an Activation node, a GRU's ``initial_state`` its h0 input and, with
``return_state=True``, its final state a second output.

Names: inputs take the names of the Keras ``Input`` layers (the keys, when the model was built
with a dict of inputs); outputs the names of the layers that compute them, as Keras's
``model.output_names`` (the keys of a dict of outputs). Of several outputs computed by one layer,
the one first in (call, tensor index) order keeps the layer's name; the others are ``layer:index``
(``gru:1``: a GRU's state) or ``layer:call:index`` (a later call of a shared layer).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...errors import GrurtError, ModelFormatError, UnsupportedModelError
from ...graph import Combine, Concat, Graph, Input, Node, Output, Slice
from ...graph import Masking, mask_survives, node_output
from ...spec import GRU, Activation, GlobalPool, activation, fold_layer, layer_output
from .layers import (_FOLDING, _LAYERS, OPS, LearnedState, _Layer, _batch_shape, _bidirectional, _gru, _layer_name,
                     _major, check_custom_layers, custom_mapping, frames_after, is_op, mask_refs, model_layers,
                     refuse_layer, tensor_refs, translate_layer, value_refs)

#: Keras merge layers (keras.layers) → the graph layer; Concatenate joins on the feature axis.
MERGE_LAYERS = {"Add": "add", "Subtract": "sub", "Multiply": "mul", "Average": "mean", "Maximum": "max",
                "Minimum": "min", "Concatenate": "concat"}


@dataclass(frozen=True)
class _Tensor:
    """A Keras tensor in the graph being built: its grurt name and shape."""

    name: str
    features: Optional[int]       # None: token ids
    has_time: bool
    steps: object = None          # fixed number of frames, when the input shape gives one
    mask: Optional[str] = None    # the grurt mask tensor of its steps (Keras's mask), if any

    def describe(self) -> str:
        if self.features is None:
            return f"'{self.name}' (B, T) ids"
        return f"'{self.name}' " + (f"(B, T, {self.features})" if self.has_time else f"(B, {self.features})")


def _label(layer: str, call: int, index: int) -> str:
    """The name of a layer's output tensor: the layer's name for its first call's first output."""
    if call == 0:
        return layer if index == 0 else f"{layer}:{index}"
    return f"{layer}:{call}:{index}"


def _named_refs(value, what):
    """[(key or None, tensor reference)] of the model's input_layers / output_layers."""
    if isinstance(value, dict):
        named = [(key, ref) for key, item in value.items() for ref in tensor_refs(item)]
        if len(named) != len(value):
            raise ModelFormatError(f"functional model: every entry of {what} must reference one tensor")
        return named
    refs = tensor_refs(value)
    if not refs:
        raise ModelFormatError(f"functional model: {what} lists no tensor")
    return [(None, ref) for ref in refs]


def _call(layer, call):
    """The positional arguments and keyword arguments of an inbound node, as Keras 3 writes them
    (lists and tuples alike: a live model's config has tuples). A Keras 2 node is a list of
    ``[layer, node, tensor, kwargs]``: one entry is the one argument, several a list of tensors
    (a merge layer's inputs; an RNN's sequence then its initial states), with the kwargs of the
    last entry."""
    node = layer["inbound_nodes"][call]
    if isinstance(node, (list, tuple)):
        if not node or not all(isinstance(entry, (list, tuple)) and len(entry) in (3, 4) for entry in node):
            raise ModelFormatError(f"a Keras 2 inbound node must list [layer, node, tensor, kwargs] entries, "
                                   f"got {node!r}")
        tensors = [_tensor(entry[:3]) for entry in node]
        kwargs = node[-1][3] if len(node[-1]) == 4 else {}
        if not isinstance(kwargs, dict):
            raise ModelFormatError(f"a Keras 2 inbound node's kwargs must be a dict, got {kwargs!r}")
        return [tensors[0] if len(tensors) == 1 else tensors], {key: _legacy_value(value)
                                                                for key, value in kwargs.items()}
    if not isinstance(node, dict) or not isinstance(node.get("args", []), (list, tuple)) \
            or not isinstance(node.get("kwargs", {}), dict):
        raise ModelFormatError(f"an inbound node must be {{args, kwargs}} (Keras 3) or a list (Keras 2), got "
                               f"{node!r}")
    return list(node.get("args", [])), dict(node.get("kwargs", {}))


def _tensor(history) -> dict:
    """A Keras 3 tensor reference for a Keras 2 ``[layer, node, tensor]``."""
    return {"class_name": "__keras_tensor__", "config": {"keras_history": list(tensor_refs([history])[0])}}


def _legacy_value(value):
    """A Keras 2 call kwarg: its ``[layer, node, tensor]`` references as Keras 3 tensors."""
    if isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str):
        return _tensor(value)
    if isinstance(value, (list, tuple)):
        return [_legacy_value(item) for item in value]
    return value


def _one_tensor(value, what):
    if not _is_tensor(value):
        raise UnsupportedModelError(f"{what} must be one tensor of the model, got {value!r}")
    return tensor_refs(value)[0]


def _is_tensor(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("config"), dict) and "keras_history" in value["config"]


class _Builder:
    def __init__(self, model_config, weights, keras_version, custom_layers=None):
        self.custom_layers = check_custom_layers(custom_layers)
        self.kind, config, layers = model_layers(model_config)
        self.weights, self.keras_version, self.keras_major = weights, str(keras_version), _major(keras_version)
        self.by_name = {}
        for layer in layers:
            if self.by_name.setdefault(_layer_name(layer), layer) is not layer:
                raise ModelFormatError(f"{self.kind}: two layers are named {_layer_name(layer)!r}")
        self.tensors, self.nodes, self.producer, self.used = {}, [], {}, set()
        self.learned = {}            # tensor name -> a LearnedState's vector (a GRU's initial state)
        self.inputs = _named_refs(config.get("input_layers"), "input_layers")
        self.outputs = _named_refs(config.get("output_layers"), "output_layers")
        calls = [(layer, call) for layer in layers if layer["class_name"] != "InputLayer"
                 for call in range(len(layer.get("inbound_nodes") or ()))]
        for layer, call in calls:        # every tensor reference well formed, before anything reads them
            try:
                tensor_refs(layer["inbound_nodes"][call])
            except ModelFormatError as exc:
                raise ModelFormatError(f"layer {_layer_name(layer)!r} ({layer['class_name']}): {exc}") from None
        mask_ops = _mask_operations(calls, {ref for _, ref in self.outputs})
        self.calls = [(layer, call) for layer, call in calls if _layer_name(layer) not in mask_ops]
        # how often each Keras tensor is read: a layer folds into the one before only when it is the sole reader
        self.reads = {}
        for layer, call in self.calls:
            for ref in value_refs(layer["inbound_nodes"][call]):
                self.reads[ref] = self.reads.get(ref, 0) + 1
        for _, ref in self.outputs:
            self.reads[ref] = self.reads.get(ref, 0) + 2

    # ---- names ----

    def output_names(self):
        by_layer = {}
        for _, ref in self.outputs:
            by_layer.setdefault(ref[0], []).append(ref)
        names, seen = {}, {}
        for position, (key, ref) in enumerate(self.outputs):
            if ref in seen:
                raise UnsupportedModelError(f"outputs {seen[ref]} and {position} of the model are the same tensor "
                                            f"(layer {ref[0]!r}); grurt gives each tensor once")
            seen[ref] = position
            if key is not None:
                names[ref] = str(key)
            elif len(by_layer[ref[0]]) == 1 or ref == min(by_layer[ref[0]], key=lambda r: (r[1], r[2])):
                names[ref] = ref[0]
            else:
                names[ref] = _label(*ref)
        return names

    def fresh(self, name: str) -> str:
        """``name``, or a variant of it no other tensor has."""
        candidate, n = name, 1
        while candidate in self.used:
            candidate, n = f"{name}~{n}", n + 1
        self.used.add(candidate)
        return candidate

    # ---- the graph ----

    def build(self) -> Graph:
        self.final = self.output_names()
        self.used.update(self.final.values())
        inputs = [self.input(key, ref) for key, ref in self.inputs]
        pending = list(self.calls)
        while pending:
            ready = [(layer, call) for layer, call in pending
                     if all(ref in self.tensors for ref in value_refs(layer["inbound_nodes"][call]))]
            if not ready:
                layer, call = pending[0]
                missing = [ref for ref in value_refs(layer["inbound_nodes"][call]) if ref not in self.tensors]
                raise ModelFormatError(f"layer {_layer_name(layer)!r} reads tensor {list(missing[0])}, which no layer "
                                       "of the model computes (or the layers form a cycle)")
            for layer, call in ready:
                self.translate(layer, call)
            pending = [item for item in pending if item not in ready]
        outputs = []
        for _, ref in self.outputs:
            if ref not in self.tensors:
                raise ModelFormatError(f"the model's output {list(ref)} is not computed by any layer")
            if self.tensors[ref].name != self.final[ref]:
                raise UnsupportedModelError(f"the model gives its input {self.tensors[ref].name!r} back as output; "
                                            "grurt's outputs are computed by layers")
            outputs.append(Output(self.final[ref]))
        if not any(isinstance(node.layer, GRU) for node in self.nodes):
            raise UnsupportedModelError("the Keras model contains no GRU layer")
        return Graph(tuple(inputs), tuple(self.nodes), tuple(outputs))

    def input(self, key, ref):
        layer = self.by_name.get(ref[0])
        if layer is None or layer["class_name"] != "InputLayer" or ref[1:] != (0, 0):
            raise ModelFormatError(f"the model's input {list(ref)} is not an InputLayer")
        name = str(key) if key is not None else ref[0]
        if name in self.used:
            raise ModelFormatError(f"input name {name!r} is also the name of an output or another input")
        self.used.add(name)
        shape = _batch_shape(layer)
        readers = {reader["class_name"] for reader, call in self.calls
                   if ref in tensor_refs(reader["inbound_nodes"][call])}
        ok = isinstance(shape, (list, tuple)) and len(shape) in (2, 3) and all(
            d is None or (type(d) is int and d >= 1) for d in shape[1:])
        if ok and len(shape) == 2 and readers == {"Embedding"}:
            self.tensors[ref] = _Tensor(name, None, True, shape[1])
            return Input(name, None, "ids")
        if not ok or shape[-1] is None or "Embedding" in readers:
            raise UnsupportedModelError(
                f"input {name!r} of shape {tuple(shape) if isinstance(shape, (list, tuple)) else shape}: grurt takes "
                "sequences (batch, time, features), vectors (batch, features) and token ids (batch, time) read only "
                "by Embedding layers")
        has_time = len(shape) == 3
        self.tensors[ref] = _Tensor(name, shape[-1], has_time, shape[1] if has_time else None)
        return Input(name, shape[-1], "sequence" if has_time else "vector")

    def name_for(self, ref) -> str:
        return self.final[ref] if ref in self.final else self.fresh(_label(*ref))

    def add(self, layer, inputs, outputs):
        self.nodes.append(Node(layer, tuple(inputs), tuple(outputs)))
        for name in outputs:
            self.producer[name] = len(self.nodes) - 1

    # ---- one call of one layer ----

    def translate(self, config, call):
        kind, name = config["class_name"], _layer_name(config)
        where = f"layer {name!r} ({kind})" if call == 0 else f"layer {name!r} ({kind}, call {call})"
        custom = custom_mapping(config, self.custom_layers) if kind != "Lambda" else None
        if kind not in MERGE_LAYERS and kind not in _LAYERS and not is_op(config) and custom is None:
            refuse_layer(where, config, f"InputLayer, {', '.join(MERGE_LAYERS)}, {', '.join(_LAYERS)}")
        try:
            args, kwargs = _call(config, call)
            if kwargs.pop("training", None) not in (None, False):
                raise UnsupportedModelError("is called with training=True")
            # the mask Keras 3 recorded: grurt derives it (mask_survives), unless it was made by hand
            if mask_refs({"kwargs": {"mask": kwargs.pop("mask", None)}}) and not any(
                    self.tensors[ref].mask for ref in value_refs({"args": args})[:1]):
                raise UnsupportedModelError("is called with a mask= made by hand; grurt derives masks from "
                                            "Masking and Embedding(mask_zero=True) layers")
            if is_op(config) and custom is None:
                self.op(config, call, args, kwargs)
            elif kind in MERGE_LAYERS and custom is None:
                self.merge(config, call, args, kwargs)
            elif kind in ("GRU", "Bidirectional") and custom is None:
                self.gru(config, call, args, kwargs)
            else:
                if kwargs or len(args) != 1:
                    raise UnsupportedModelError(f"takes one tensor; called with {len(args)} arguments and "
                                                f"{sorted(kwargs)}")
                self.layer(config, call, _one_tensor(args[0], "its input"), custom)
        except GrurtError as exc:
            raise type(exc)(f"{where}: {exc}") from None
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # a hostile config
            raise ModelFormatError(f"{where}: malformed config or weights ({exc!r})") from None

    def _layer(self, config, source: _Tensor, layer_config=None, custom=None) -> _Layer:
        return _Layer(config["class_name"], _layer_name(config), layer_config or config.get("config", {}),
                      self.weights.get(_layer_name(config), []), self.keras_major, source.features, source.has_time,
                      steps=source.steps, keras_version=self.keras_version, masked=source.mask is not None,
                      custom=custom)

    def chain(self, produced, inputs, call_ref, state=None) -> str:
        """Nodes for ``produced`` (canonical layers in order), the first reading ``inputs`` and giving
        the tensor ``state`` too when set (a GRU's h_n); returns the name of the last one's output, the
        Keras tensor ``call_ref``."""
        for position, layer in enumerate(produced):
            last = position == len(produced) - 1
            out = self.name_for(call_ref) if last else self.fresh(f"{_label(*call_ref)}/{position}")
            self.add(layer, inputs, [out] + ([state] if position == 0 and state else []))
            inputs = [out]
        return out

    def layer(self, config, call, ref, custom=None):
        kind = config["class_name"]
        source = self.tensors[ref]
        if (source.features is None) != (kind == "Embedding") and custom is None:
            raise UnsupportedModelError(f"reads {source.describe()}; token ids go into an Embedding layer, "
                                        "which reads nothing else")
        self.refuse_learned(source)
        translating = self._layer(config, source, custom=custom)
        produced = translate_layer(translating)
        call_ref = (_layer_name(config), call, 0)
        if produced and isinstance(produced[0], LearnedState):     # a GRU's learned initial state
            self.learned[_label(*call_ref)] = produced[0].value
            self.tensors[call_ref] = _Tensor(_label(*call_ref), produced[0].value.size, False)
            return
        if produced and isinstance(produced[0], Masking):     # Masking, Embedding(mask_zero): (y, mask)
            y, mask = (self.name_for(call_ref) if len(produced) == 1 else self.fresh(f"{_label(*call_ref)}/0"),
                       self.fresh(f"{_label(*call_ref)}/mask"))
            self.add(produced[0], [source.name], [y, mask])
            source = _Tensor(y, source.features, source.has_time, source.steps, mask)
            produced = produced[1:]
            if not produced:
                self.tensors[call_ref] = source
                return
        features, has_time, steps, mask = source.features, source.has_time, source.steps, source.mask
        for layer in produced:
            features, has_time = node_output(f"layer {_layer_name(config)!r}", layer, features, has_time)
            steps = frames_after(translating, layer, steps, source.steps) if has_time else None
            mask = mask if mask_survives(layer, mask is not None) else None
        if not produced:                    # Dropout and friends: the same tensor
            self.tensors[call_ref] = source if call_ref not in self.final else self.alias(source, call_ref)
            return
        if isinstance(produced[0], GlobalPool) and produced[0].mode == "average" and source.mask is not None:
            name = self.name_for(call_ref)      # the mean of the valid steps
            self.add(produced[0], [source.name, source.mask], [name])
            self.tensors[call_ref] = _Tensor(name, features, False)
            return
        previous = self.producer.get(source.name)
        if kind in _FOLDING and previous is not None and self.reads.get(ref) == 1 \
                and len(self.nodes[previous].outputs) == 1:
            merged = fold_layer(self.nodes[previous].layer, produced[0])
            if merged is not None:          # BatchNormalization into a Dense or Conv1D, ...
                node = self.nodes[previous]
                if len(produced) == 1:
                    name = self.name_for(call_ref)
                    self.nodes[previous] = Node(merged, node.inputs, (name,))
                    self.producer[name] = previous
                    self.tensors[call_ref] = _Tensor(name, features, has_time, steps, mask)
                    return
                self.nodes[previous] = Node(merged, node.inputs, node.outputs)
                produced = produced[1:]
        self.tensors[call_ref] = _Tensor(self.chain(produced, [source.name], call_ref), features, has_time, steps,
                                         mask)

    def refuse_learned(self, *tensors):
        for tensor in tensors:
            if tensor.name in self.learned:
                raise UnsupportedModelError(f"reads '{tensor.name}', a LearnedState, which goes only into a GRU's "
                                            "initial_state")

    def alias(self, source: _Tensor, ref):
        """A model output that is a no-op layer's: the tensor under the output's name (a linear Activation)."""
        name = self.final[ref]
        self.add(Activation(activation("linear")), [source.name], [name])
        return _Tensor(name, source.features, source.has_time, source.steps, source.mask)

    def merge(self, config, call, args, kwargs):
        kind = config["class_name"]
        if kwargs or len(args) != 1 or not isinstance(args[0], (list, tuple)) or len(args[0]) < 2:
            raise UnsupportedModelError("takes one list of two or more tensors")
        sources = [self.tensors[_one_tensor(item, "each merged value")] for item in args[0]]
        self.refuse_learned(*sources)
        op = MERGE_LAYERS[kind]
        shapes = ", ".join(t.describe() for t in sources)
        if any(t.features is None for t in sources):
            raise UnsupportedModelError(f"token ids go only into an Embedding ({shapes})")
        if op == "concat":
            axis = config.get("config", {}).get("axis", -1)
            if axis not in (-1, 2 if sources[0].has_time else 1):
                raise UnsupportedModelError(f"axis={axis!r}; grurt concatenates on the last (feature) axis")
        if len({t.has_time for t in sources}) != 1 or (op != "concat" and len({t.features for t in sources}) != 1) \
                or len({t.steps for t in sources if isinstance(t.steps, int)}) > 1:
            raise UnsupportedModelError(f"merges tensors of incompatible shapes: {shapes}; grurt merges tensors of "
                                        "one shape (sequences with sequences, no broadcasting)"
                                        + ("" if op != "concat" else " on the feature axis"))
        layer = Concat() if op == "concat" else Combine(op)
        call_ref = (_layer_name(config), call, 0)
        name = self.name_for(call_ref)
        self.add(layer, [t.name for t in sources], [name])
        steps = next((t.steps for t in sources if isinstance(t.steps, int)), None)
        features = sum(t.features for t in sources) if op == "concat" else sources[0].features
        self.tensors[call_ref] = _Tensor(name, features, sources[0].has_time, steps,
                                         None if is_op(config) else self.merged_mask(sources))

    def merged_mask(self, sources):
        """The mask of a merge layer's output: Keras 3 ORs its inputs' masks, or drops it when one has
        none; Keras 2 ANDs the masks there are. Where both agree (one mask shared by all, or none): it."""
        masks = {t.mask for t in sources}
        if len(masks) == 1:
            return masks.pop()
        if self.keras_major >= 3 and None in masks:
            return None
        raise UnsupportedModelError("merges sequences masked differently (" + ", ".join(
            f"'{t.name}' " + (f"masked by '{t.mask}'" if t.mask else "unmasked") for t in sources)
            + "); grurt merges sequences that share one mask, or (Keras 3) with an unmasked one")

    def op(self, config, call, args, kwargs):
        """A keras.ops operation: x + y, x - y, x * y, keras.ops.maximum / minimum of two tensors and
        keras.ops.concatenate as the merge layers; keras.ops.sigmoid as an Activation layer."""
        kind = config["class_name"]
        values = args[0] if kind == "Concatenate" and len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        if kind not in OPS or kwargs or not all(_is_tensor(v) for v in values) \
                or len(values) != {"Sigmoid": 1, "Concatenate": len(values)}.get(kind, 2):
            operands = ", ".join(self.tensors[tensor_refs(v)[0]].describe() if _is_tensor(v) else repr(v)
                                 for v in values)
            raise UnsupportedModelError(
                f"keras.ops operation {kind} of {operands}{f' with {sorted(kwargs)}' if kwargs else ''} is not "
                "supported; grurt converts x + y, x - y, x * y, keras.ops add, subtract, multiply, maximum and "
                "minimum of two tensors of one shape, keras.ops.concatenate on the feature axis and "
                "keras.ops.sigmoid (no constants, no broadcasting)")
        if kind == "Sigmoid":
            self.layer({"class_name": "Activation", "config": {"name": _layer_name(config), "activation": "sigmoid"}},
                       call, tensor_refs(values[0])[0])
            call_ref = (_layer_name(config), call, 0)        # an operation drops the mask
            self.tensors[call_ref] = dataclasses.replace(self.tensors[call_ref], mask=None)
        else:
            self.merge(config, call, [values], {})

    def gru(self, config, call, args, kwargs):
        """A GRU or Bidirectional(GRU) call: h0 from ``initial_state`` (a tensor or a list: one per
        direction), and with ``return_state`` the final state(s) as outputs 1 (and 2)."""
        kind, name = config["class_name"], _layer_name(config)
        if len(args) == 1 and isinstance(args[0], list) and len(args[0]) > 1:    # Keras 2: [x, initial states]
            args = [args[0][0], args[0][1:]]
        if len(args) not in (1, 2) or (len(args) == 2 and "initial_state" in kwargs) or set(kwargs) - {"initial_state"}:
            raise UnsupportedModelError(f"takes a sequence and initial_state=; called with {len(args)} arguments "
                                        f"and {sorted(kwargs)}")
        source = self.tensors[_one_tensor(args[0], "its input")]
        self.refuse_learned(source)
        initial = args[1] if len(args) == 2 else kwargs.get("initial_state")
        layer_config = dict(config.get("config", {}))
        if kind == "GRU":
            returns_state = bool(layer_config.pop("return_state", False))
            produced = _gru(self._layer(config, source, layer_config))
            directions = 1
        else:
            inner = dict(layer_config["layer"])
            inner["config"] = dict(inner["config"])
            returns_state = bool(inner["config"].pop("return_state", False))
            layer_config["layer"] = inner
            if isinstance(layer_config.get("backward_layer"), dict):
                backward = dict(layer_config["backward_layer"])
                backward["config"] = {k: v for k, v in backward["config"].items() if k != "return_state"}
                layer_config["backward_layer"] = backward
            produced = _bidirectional(self._layer(config, source, layer_config))
            directions = 2
        gru = produced[0]
        hidden = gru.hidden_size
        inputs = [source.name]
        # Keras 3 hands the input's mask to a GRU called on the sequence alone, not with initial_state
        reads_mask = source.mask is not None and initial is None
        if source.mask is not None and initial is not None and self.keras_major < 3:
            raise UnsupportedModelError("a masked sequence with initial_state is not supported in Keras 2 models")
        if reads_mask and kind == "GRU" and layer_config.get("zero_output_for_mask"):
            raise UnsupportedModelError("zero_output_for_mask=True on a masked sequence is not supported (grurt "
                                        "repeats the previous output at masked steps, as Keras's default)")
        if initial is not None:
            states = [self.tensors[_one_tensor(item, "initial_state")]
                      for item in (initial if isinstance(initial, (list, tuple)) else [initial])]
            if len(states) != directions or any(t.has_time or t.features != hidden for t in states):
                raise UnsupportedModelError(f"initial_state must be {directions} vector(s) (B, {hidden}), got "
                                            + ", ".join(t.describe() for t in states))
            learned = [t.name in self.learned for t in states]
            if any(learned) and not all(learned):
                raise UnsupportedModelError("initial_state mixes a LearnedState with a computed state")
        if initial is not None and all(learned):                 # the GRU's own learned state
            produced[0] = dataclasses.replace(gru, initial_state=np.stack([self.learned[t.name] for t in states]))
        elif initial is not None:
            if directions == 1:
                inputs.append(states[0].name)
            else:                        # Keras passes [forward, backward]; the canonical h0 is them side by side
                joined = self.fresh(f"{_label(name, call, 0)}/h0")
                self.add(Concat(), [t.name for t in states], [joined])
                inputs.append(joined)
        # the final state: the GRU node's second output (Keras's output 1), or for a Bidirectional its two
        # directions (outputs 1 and 2) cut from it
        if reads_mask:
            inputs.append(source.mask)
        state_ref = (name, call, 1)
        state = None if not returns_state else self.name_for(state_ref) if directions == 1 \
            else self.fresh(f"{_label(name, call, 0)}/state")
        call_ref = (name, call, 0)
        features, has_time = source.features, source.has_time
        for layer in produced:
            features, has_time = layer_output(f"layer {name!r}", layer, features, has_time)
        # the output keeps the input's mask when it is a sequence (even when the GRU did not read it)
        self.tensors[call_ref] = _Tensor(self.chain(produced, inputs, call_ref, state), features, has_time,
                                         source.steps if has_time else None, source.mask if has_time else None)
        if not returns_state:
            return
        if directions == 1:
            self.tensors[state_ref] = _Tensor(state, hidden, False)
            return
        for direction in range(directions):
            ref = (name, call, 1 + direction)
            target = self.name_for(ref)
            self.add(Slice(direction * hidden, (direction + 1) * hidden), [state], [target])
            self.tensors[ref] = _Tensor(target, hidden, False)


def _mask_operations(calls, outputs) -> set:
    """The keras.ops operations of a Keras 3 config that only compute masks (Masking and mask_zero
    record them: not_equal, any, ...): those whose every output is read only as a ``mask=`` argument
    or by another such operation. grurt derives the masks itself."""
    ops = {_layer_name(layer) for layer, _ in calls if is_op(layer)}
    while True:
        value_readers = {ref[0] for layer, call in calls if _layer_name(layer) not in ops
                         for ref in value_refs(layer["inbound_nodes"][call])}
        kept = {name for name in ops if name not in value_readers and not any(ref[0] == name for ref in outputs)}
        if kept == ops:
            return ops
        ops = kept


def graph_from_keras(model_config: dict, weights: dict, keras_version: str, custom_layers=None) -> Graph:
    """Translate a functional Keras model config and its weights (by layer name) into a Graph."""
    return _Builder(model_config, weights, keras_version, custom_layers).build()
