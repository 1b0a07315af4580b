"""Exceptions raised by grurt. Every one derives from :class:`GrurtError`."""


class GrurtError(Exception):
    """Base class of every error grurt raises on purpose."""


class ModelFormatError(GrurtError, ValueError):
    """A model file or model spec is malformed, inconsistent or hostile."""


class UnsupportedModelError(GrurtError, ValueError):
    """The model uses a layer, op, attribute or activation grurt does not implement."""


class InputError(GrurtError, ValueError):
    """The input passed to ``run``/``step`` has the wrong shape, dtype or values."""
