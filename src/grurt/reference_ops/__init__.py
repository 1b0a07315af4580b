"""The float64 reference of every registered op, by op name: ``REFERENCE[op](attrs, inputs)``
returns the list of outputs. Plain numpy (loops where that is clearest), written apart from
the fast implementations in :mod:`grurt.ops`: the oracle of the tests and of
:func:`grurt.reference.run_tensor_graph` (which holds the reference of ``grurt.Chain`` itself:
:func:`grurt.reference.chain_node`, the chain reference run). Attributes come checked, with defaults filled in
(:func:`grurt.ops.check_attributes`); float tensors are float64, integers int64."""
from . import conv, elementwise, linear, masked, recurrent, reduce, shape

REFERENCE = {}
for _family in (conv, elementwise, linear, masked, recurrent, reduce, shape):
    REFERENCE.update(_family.REFERENCE)
