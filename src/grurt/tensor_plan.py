"""Plans of a :class:`~grurt.tensor_graph.TensorGraph`, one per input signature.

A signature is the shape and dtype of each input. Planning walks the nodes in order with a
:class:`~grurt.ops.Value` per tensor (concrete shape, dtype, the array when it is known):

* each op's ``infer`` gives its outputs' shapes and dtypes; every size is counted with Python
  ints and checked before anything is allocated: an output larger than
  ``grurt.model.MEMORY_LIMIT_BYTES``, or the tensors alive at a node adding up to more, is an
  :class:`~grurt.errors.InputError` naming the node, the bytes asked and the limit;
* a node whose inputs are all known is **folded**: run once now, its outputs become constants
  of the plan (Shape/Gather/Concat/Reshape arithmetic, the zero states an exporter builds from
  the input's shape, transposes of constant weights). ``Shape`` and ``Size`` are known from
  their input's shape alone and fold whatever computes it;
* every other node becomes a step ``(op.run, ctx, input slots, output slots)`` with ``ctx``
  from ``op.prepare`` (weights packed once per plan), and each tensor's slot is emptied after
  the last step reading it;
* the steps are then rewritten where the shapes allow (:mod:`grurt.tensor_passes`: a weighted
  sum as one matrix product, attention as one step, Gemms on packed weights, elementwise ops
  in place), and each run of steps that have a C form becomes one native step (:mod:`grurt.tensor_native`:
  one call without the GIL; ``Plan.runs``).

Running a plan is the loop over its runs: no shape logic, no checks, no lookups.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ._kernels import NativeProgram, _memory_limit
from .errors import GrurtError, InputError, ModelFormatError, UnsupportedModelError
from .ops import BOOL, FLOAT, INT, REGISTRY, Value
from .tensor_graph import TensorGraph
from . import tensor_native
from .ops.recurrent import CALL
from .tensor_passes import optimize

#: Ops whose outputs depend on their inputs' shapes only: folded at plan time from the shapes.
SHAPE_OPS = ("Shape", "Size")
_DTYPES = (FLOAT, INT, BOOL)


#: What numpy raises on values a shape rule cannot foresee (a maximum over an empty axis, ...).
_NUMPY_ERRORS = (ValueError, IndexError, TypeError, ArithmeticError, MemoryError)


def signature(arrays) -> Tuple:
    """The key of a plan: (shape, dtype) of each input array."""
    return tuple((a.shape, a.dtype) for a in arrays)


class Plan:
    """The steps of a graph for one input signature.

    ``slots``: the initial value of each slot (slot 0 is always None, for omitted inputs; the
    plan's constants are in theirs); ``steps``: ``(run, ctx, input slots, [(output index, slot)],
    slots to empty after it, node)``; ``outputs``: the slot of each graph output; ``runs``: what
    ``run`` executes, the same steps but runs of them as one native step each (:mod:`grurt.tensor_native`).
    """

    __slots__ = ("slots", "input_slots", "steps", "runs", "outputs", "peak_bytes", "constant_bytes", "_program",
                 "whole")

    def __init__(self, slots, input_slots, steps, outputs, peak_bytes, constant_bytes, runs=None):
        self.slots, self.input_slots, self.steps, self.outputs = slots, input_slots, steps, outputs
        self.runs = steps if runs is None else runs
        self.peak_bytes, self.constant_bytes = peak_bytes, constant_bytes
        # what run loops over: a step of one output (most) stores it without a loop
        self._program = tuple((run, ctx, ins, outs[0][1] if len(outs) == 1 and outs[0][0] == 0 else outs, frees, node)
                              for run, ctx, ins, outs, frees, node in self.runs)
        #: (NativeProgram, the positions of its inputs among the plan's, of the plan's outputs among its own, its node)
        #: when one native step computes every output from the inputs, each an array of its own: run without slots
        self.whole = None
        if len(self.runs) == 1 and isinstance(self.runs[0][1], NativeProgram) and self.runs[0][1].fresh:
            run, ctx, ins, outs, _, node = self.runs[0]
            made = {slot: k for k, slot in outs}
            if all(s in input_slots for s in ins) and all(s in made for s in outputs):
                self.whole = (ctx, tuple(input_slots.index(s) for s in ins), tuple(made[s] for s in outputs), node)

    def run(self, arrays) -> List[np.ndarray]:
        """The graph's outputs for ``arrays`` (the checked inputs, in input order), each an array of
        its own (never a view of an input or of a constant)."""
        if self.whole is not None:
            program, take, give, node = self.whole
            try:
                values = program.run([arrays[i] for i in take], CALL.threads)
            except GrurtError as exc:
                raise _where_error(exc, node.where) from None
            return [values[k] for k in give]
        slots = execute(self._program, self.slots, self.input_slots, arrays)
        values = [slots[slot] for slot in self.outputs]
        return [value.copy() if value.base is not None or not value.flags.writeable else value for value in values]

    def describe(self) -> str:
        """The steps left after folding, node by node (those of a native run under it)."""
        lines = [f"{len(self.steps)} steps, peak {self.peak_bytes} bytes of tensors, "
                 f"{self.constant_bytes} bytes of constants"]
        for _, ctx, *_, node in self.runs:
            if isinstance(ctx, NativeProgram):
                lines.append(f"  native run of {len(ctx.nodes)} steps:")
                lines += [f"    {inner.name or '-'}: {inner.describe()}" for inner in ctx.nodes]
            else:
                lines.append(f"  {node.name or '-'}: {node.describe()}")
        return "\n".join(lines)


def execute(program, constants: list, input_slots, arrays) -> list:
    """Run ``program`` (a plan's steps: ``(run, ctx, ins, out, frees, node)``, ``out`` one slot or ``(k, slot)``
    pairs) on the slot list ``constants`` with ``arrays`` in ``input_slots``; returns the slots after the last step.
    A GrurtError an op raises gets its node's name; numpy refusing values no shape rule foresaw is an InputError
    naming the node, never escaping."""
    slots = list(constants)
    for slot, array in zip(input_slots, arrays):
        slots[slot] = array
    node = None
    try:
        for run, ctx, ins, out, frees, node in program:
            results = run(ctx, [slots[i] for i in ins])
            if type(out) is int:
                slots[out] = results[0]
            else:
                for k, slot in out:
                    slots[slot] = results[k]
            for slot in frees:
                slots[slot] = None
    except GrurtError as exc:      # a value-dependent check of an op (an index out of range, ...)
        raise _where_error(exc, node.where) from None
    except _NUMPY_ERRORS as exc:
        raise InputError(f"{node.where}: cannot compute it on these inputs "
                         f"({type(exc).__name__}: {exc})") from None
    return slots


def _where_error(exc: GrurtError, where: str) -> GrurtError:
    """``exc`` with the node named in front, unless the op named it already."""
    if where in str(exc):
        return exc
    return type(exc)(f"{where}: {exc}")


def _frozen(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.setflags(write=False)
    return view


def make_plan(graph: TensorGraph, sig, record: dict = None, weights: str = "float32") -> Plan:
    """The plan of ``graph`` for inputs of signature ``sig`` ((shape, dtype) per input, checked
    against the declared inputs by the caller). ``record``, when given, receives the
    :class:`~grurt.ops.Value` of every tensor by name (:mod:`grurt.tensor_stream` reads the
    shapes and folded constants). ``weights``: the mode of the weights of ops that have a
    reduced-precision form (the GRUs: ``Op.reduced``)."""
    limit = _memory_limit()
    values = {}                     # tensor name -> Value
    slot_of = {}                    # tensor name -> slot, for the tensors computed when the plan runs
    slots: list = [None]
    last_use = {}                   # tensor name -> index of the last node that reads it
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name:
                last_use[name] = index
    for name in graph.outputs:
        last_use[name] = len(graph.nodes)
    for tensor, (shape, dtype) in zip(graph.inputs, sig):
        values[tensor.name] = Value(tuple(shape), np.dtype(dtype))
        slot_of[tensor.name] = len(slots)
        slots.append(None)
    input_slots = tuple(slot_of[t.name] for t in graph.inputs)
    for name, array in graph.constants.items():
        values[name] = Value(array.shape, array.dtype, array)
    live = sum(_bytes(values[t.name]) for t in graph.inputs)     # the run-time tensors alive
    folded = 0                                                    # bytes of what folding computed
    steps, peak = [], live
    constant_slots = {}             # constant name -> its slot (holding it from the start)
    for index, node in enumerate(graph.nodes):
        where = node.where
        op = REGISTRY[node.op]
        args = [values[name] if name else None for name in node.inputs]
        for position in op.const_inputs:
            if position < len(args) and args[position] is not None and args[position].const is None:
                raise UnsupportedModelError(f"{where}: input {position} ('{node.inputs[position]}') is computed from "
                                            f"the model's inputs; grurt needs this input of {op.name} constant when "
                                            "the plan is made")
        try:
            inferred = op.infer(node.attrs, args)
        except GrurtError as exc:
            raise _where_error(exc, where) from None
        if len(inferred) < len(node.outputs):
            raise ModelFormatError(f"{where}: {op.name} gives {len(inferred)} outputs, the node names "
                                   f"{len(node.outputs)}")
        outputs = {}                # output index -> Value (without its array), for the outputs the node names
        for k, (name, (shape, dtype)) in enumerate(zip(node.outputs, inferred)):
            value = Value(tuple(int(d) for d in shape), np.dtype(dtype))
            if value.dtype not in _DTYPES or any(d < 0 for d in value.shape):
                raise ModelFormatError(f"{where}: output '{name}' has shape {value.shape} and dtype {value.dtype}")
            if name:
                outputs[k] = value
        asked = sum(_bytes(v) for v in outputs.values())
        if live + folded + asked > limit:
            raise InputError(f"{where}: its outputs ({', '.join(str(v.shape) for v in outputs.values())}) need "
                             f"{_amount(asked)}; with the {_amount(live + folded)} of tensors alive at this node, more "
                             f"than the limit of {_amount(limit)} (grurt.model.MEMORY_LIMIT_BYTES)")
        try:
            ctx = op.prepare(node.attrs, args) if op.prepare is not None else node.attrs
            if weights != "float32" and op.reduced is not None:
                ctx = op.reduced(ctx, weights)
        except GrurtError as exc:
            raise _where_error(exc, where) from None
        if op.name in SHAPE_OPS or all(a is None or a.const is not None for a in args):
            # known now: run once (Shape and Size on a zero-stride stand-in of their input)
            arrays = [None if a is None else a.const if a.const is not None
                      else np.broadcast_to(np.zeros((), a.dtype), a.shape) for a in args]
            try:
                results = op.run(ctx, arrays)
            except GrurtError as exc:
                raise _where_error(exc, where) from None
            except _NUMPY_ERRORS as exc:
                raise ModelFormatError(f"{where}: cannot compute it from the model's constants "
                                       f"({type(exc).__name__}: {exc})") from None
            for k, value in outputs.items():
                result = results[k]
                if result.shape != value.shape or result.dtype != value.dtype:
                    raise AssertionError(f"{where}: {op.name} computed {result.dtype} {result.shape} where its "
                                         f"shape rule says {value.dtype} {value.shape}")
                values[node.outputs[k]] = Value(value.shape, value.dtype, _frozen(result))
                folded += _bytes(value)
            continue
        outs = []
        for k, value in outputs.items():
            name = node.outputs[k]
            values[name] = value
            slot_of[name] = len(slots)
            outs.append((k, len(slots)))
            slots.append(None)
        live += asked
        peak = max(peak, live + folded)
        ins = tuple(_slot(name, values, slot_of, slots, constant_slots) for name in node.inputs)
        # the memory count: the run-time tensors read for the last time here, and the outputs nobody reads
        done = [n for n in dict.fromkeys(node.inputs) if n in slot_of and last_use[n] == index]
        done += [node.outputs[k] for k in outputs if node.outputs[k] not in last_use]
        live -= sum(_bytes(values[n]) for n in done)
        steps.append((op.run, ctx, ins, tuple(outs), (), node))          # frees: _freed_after_last_step
    results = tuple(_slot(name, values, slot_of, slots, constant_slots) for name in graph.outputs)
    steps = _freed_after_last_step(steps, set(slot_of.values()) - set(results))
    if record is not None:
        record.update(values)
    known = {slot: values[name] for names in (slot_of, constant_slots) for name, slot in names.items()}
    steps = optimize(steps, known)
    runs = tensor_native.native_runs(steps, known, results) if tensor_native.ENABLED else None
    return Plan(tuple(slots), input_slots, steps, results, peak, folded, runs)


def _freed_after_last_step(steps, freeable) -> list:
    """``steps`` with each of the ``freeable`` slots emptied after the last step reading it (after the step
    making it when none does). A tensor's last reader may be a folded node (a Shape of it): its slot
    is emptied at the last step, not kept to the end of the run."""
    last = {}
    for index, (_, _, ins, outs, _, _) in enumerate(steps):
        for _, slot in outs:
            last.setdefault(slot, index)
        for slot in ins:
            last[slot] = index
    frees = {}
    for slot in freeable:
        if slot in last:
            frees.setdefault(last[slot], []).append(slot)
    return [(run, ctx, ins, outs, tuple(sorted(frees.get(index, ()))), node)
            for index, (run, ctx, ins, outs, _, node) in enumerate(steps)]


def _bytes(value: Value) -> int:
    return value.size * value.dtype.itemsize


def _slot(name: str, values: dict, slot_of: dict, slots: list, constant_slots: dict) -> int:
    """The slot of tensor ``name`` (0: an omitted input); a constant gets a slot holding it."""
    if not name:
        return 0
    if name in slot_of:
        return slot_of[name]
    if name not in constant_slots:
        constant_slots[name] = len(slots)
        slots.append(values[name].const)
    return constant_slots[name]


def _amount(size: int) -> str:
    if size >= 2**30:
        return f"{size} bytes ({size / 2**30:.1f} GiB)"
    return f"{size} bytes"
