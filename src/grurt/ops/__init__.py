"""The op registry: every general tensor op grurt runs, stated in one place.

The registry itself (:class:`Op`, :class:`Attr`, :class:`Value`, ``REGISTRY``, the shared helpers) is
:mod:`grurt.ops.registry`; importing this package registers every family's ops.
"""
from .registry import (  # noqa: F401 (the public surface of the registry)
    REQUIRED, ATTRIBUTE_KINDS, INT_BOUND, Attr, Value, Op, REGISTRY, register, REFUSED, lookup, time_rule,
    check_attributes, FLOAT, INT, BOOL, canonical_dtype, broadcast_shapes, normalize_axis, const_ints)

# each family registers its ops on import (it imports Op and register from .registry)
from . import chain, conv, elementwise, linear, masked, recurrent, reduce, shape  # noqa: E402,F401
