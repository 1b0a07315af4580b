"""Layers over time: convolution, pooling and zero padding (Conv1D, Pool1D, ZeroPad1D).

They read and write (B, T, F) sequences like every layer, but change the number of frames:
a layer with T input frames yields ``output_steps(T)`` frames. Padding is explicit: a
(left, right) count of zero frames, or for strides above 1 a SAME rule, "same_upper" or
"same_lower", which depends on T (``pads(T)``): ceil(T / stride) outputs, the odd padding
frame at the end (upper) or at the start (lower). Importers translate each framework's
convention (docs/convolutions.md). Re-exported by :mod:`grurt.spec`, which checks these
layers in a model and counts frames through them (``output_steps``, ``min_steps``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

import numpy as np

from ._fields import LINEAR, POOL_MODES, ActivationFunction, _positive_int, _weights
from .errors import ModelFormatError, UnsupportedModelError
from .limits import MAX_PADDING_FRAMES, MAX_WINDOW_FRAMES, bounded_int

#: The padding rules that depend on the input length (stride > 1); with stride 1 they are
#: turned into explicit frame counts when the layer is built.
SAME_PADDINGS = ("same_upper", "same_lower")



def _padding_frames(owner: str, name: str, value) -> int:
    return bounded_int(owner, name, value, 0, MAX_PADDING_FRAMES, "MAX_PADDING_FRAMES")


def _padding(owner: str, padding, stride: int, span: int):
    """``padding`` as (left, right) ints, or a SAME_PADDINGS name when it depends on T."""
    if isinstance(padding, str):
        if padding not in SAME_PADDINGS:
            raise ModelFormatError(f"{owner}: padding {padding!r} is not (left, right) or one of {SAME_PADDINGS}")
        if stride == 1:      # SAME with stride 1: span - 1 frames, the odd one at the end (upper) or start (lower)
            total = span - 1
            small, large = total // 2, total - total // 2
            return (small, large) if padding == "same_upper" else (large, small)
        return padding
    if not isinstance(padding, (tuple, list)) or len(padding) != 2:
        raise ModelFormatError(f"{owner}: padding must be (left, right) frame counts, got {padding!r}")
    return tuple(_padding_frames(owner, "padding", p) for p in padding)


def same_pads(steps: int, stride: int, span: int, lower: bool = False) -> Tuple[int, int]:
    """SAME padding of ``steps`` frames: ceil(steps / stride) outputs; the total
    max((ceil(steps / stride) − 1)·stride + span − steps, 0) split in halves, the odd frame at
    the end, or at the start when ``lower``."""
    total = max((-(-steps // stride) - 1) * stride + span - steps, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


class _TimeLayer:
    """What Conv1D and Pool1D share: a window of ``span`` frames every ``stride`` frames."""

    def pads(self, steps: int) -> Tuple[int, int]:
        """(left, right) zero frames added to an input of ``steps`` frames."""
        if isinstance(self.padding, str):
            return same_pads(steps, self.stride, self.span, self.padding == "same_lower")
        return self.padding

    def output_steps(self, steps: int) -> int:
        """Frames out for ``steps`` frames in; 0 when the input is shorter than one window."""
        left, right = self.pads(steps)
        padded = steps + left + right
        return 0 if padded < self.span else (padded - self.span) // self.stride + 1

    @property
    def causal(self) -> bool:
        """One output per input frame, computed from that frame and earlier ones only: streams."""
        return self.stride == 1 and self.padding == (self.span - 1, 0)

    def _padding_text(self) -> str:
        return self.padding if isinstance(self.padding, str) else f"pad={self.padding[0]},{self.padding[1]}"


@dataclass(frozen=True, eq=False)
class Conv1D(_TimeLayer):
    """A 1-D convolution over time (cross-correlation, as in every framework)::

        y[b, t, o] = activation(b[o] + Σ_j Σ_c W[o, c, j] · xp[b, t·stride + j·dilation, g·C/G + c])

    ``W`` (out, in/groups, k); ``b`` (out,); output channel o
    belongs to group g = o // (out/groups); ``xp`` is the input with ``padding`` zero frames
    added (left, right). ``groups`` = in = out is a depthwise convolution.
    """

    W: np.ndarray
    b: np.ndarray
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    padding: Union[Tuple[int, int], str] = (0, 0)
    activation: ActivationFunction = LINEAR

    def __post_init__(self):
        W = np.asarray(self.W)
        if W.ndim != 3 or 0 in W.shape:
            raise ModelFormatError(f"Conv1D: W must be a non-empty 3-D (out, in/groups, k) array, got shape {W.shape}")
        set_ = object.__setattr__
        for name, limit in (("stride", "MAX_STRIDE"), ("dilation", "MAX_DILATION"), ("groups", "")):
            set_(self, name, _positive_int("Conv1D", name, getattr(self, name), limit))
        if W.shape[0] % self.groups:
            raise ModelFormatError(f"Conv1D: {W.shape[0]} output channels do not split into {self.groups} groups")
        set_(self, "W", _weights("Conv1D", "W", W, W.shape))
        if self.span > MAX_WINDOW_FRAMES:
            raise ModelFormatError(f"Conv1D: its window of (kernel_size - 1)·dilation + 1 = {self.span} frames is "
                                   f"longer than {MAX_WINDOW_FRAMES} (grurt.limits.MAX_WINDOW_FRAMES)")
        set_(self, "b", _weights("Conv1D", "b", self.b, (W.shape[0],)))
        set_(self, "padding", _padding("Conv1D", self.padding, self.stride, self.span))
        if not isinstance(self.activation, ActivationFunction):
            raise ModelFormatError(f"Conv1D: expected an ActivationFunction, got {self.activation!r}")

    @property
    def kernel_size(self) -> int:
        return self.W.shape[2]

    @property
    def span(self) -> int:
        """Input frames one output frame reads: (k − 1)·dilation + 1."""
        return (self.kernel_size - 1) * self.dilation + 1

    @property
    def in_channels(self) -> int:
        return self.W.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.W.shape[0]

    @property
    def input_size(self) -> int:
        return self.in_channels

    @property
    def output_size(self) -> int:
        return self.out_channels

    def describe(self) -> str:
        parts = [f"{self.in_channels} -> {self.out_channels}", f"k={self.kernel_size}"]
        parts += [f"{n}={getattr(self, n)}" for n in ("stride", "dilation", "groups") if getattr(self, n) != 1]
        parts += ["causal" if self.causal and self.span > 1 else self._padding_text(), self.activation.describe()]
        return f"Conv1D({', '.join(parts)})"


@dataclass(frozen=True, eq=False)
class Pool1D(_TimeLayer):
    """Max or average pooling over time, per feature: output frame t reads the frames
    t·stride − left ... t·stride − left + size − 1 of the input. Padding frames take no part
    in a maximum; an average divides by ``size`` when ``count_include_pad``, else by the
    number of real frames in the window."""

    mode: str
    size: int
    stride: int = 1
    padding: Union[Tuple[int, int], str] = (0, 0)
    count_include_pad: bool = False

    def __post_init__(self):
        if self.mode not in POOL_MODES:
            raise UnsupportedModelError(f"Pool1D: mode {self.mode!r} is not one of {POOL_MODES}")
        set_ = object.__setattr__
        for name, limit in (("size", "MAX_WINDOW_FRAMES"), ("stride", "MAX_STRIDE")):
            set_(self, name, _positive_int("Pool1D", name, getattr(self, name), limit))
        set_(self, "padding", _padding("Pool1D", self.padding, self.stride, self.size))
        if not isinstance(self.padding, str) and max(self.padding) >= self.size:
            raise ModelFormatError(f"Pool1D: padding {self.padding} must be smaller than the window ({self.size}) "
                                   "on each side, so that every window holds a real frame")
        if not isinstance(self.count_include_pad, (bool, np.bool_)):
            raise ModelFormatError(f"Pool1D: count_include_pad must be a bool, got {self.count_include_pad!r}")
        set_(self, "count_include_pad", bool(self.count_include_pad) and self.mode == "average")

    @property
    def span(self) -> int:
        return self.size

    def describe(self) -> str:
        parts = [self.mode, f"size={self.size}", f"stride={self.stride}", self._padding_text()]
        if self.count_include_pad:
            parts.append("count_include_pad")
        return f"Pool1D({', '.join(parts)})"


@dataclass(frozen=True, eq=False)
class ZeroPad1D:
    """Adds ``left`` and ``right`` zero frames to every sequence: T frames become left + T + right."""

    left: int = 0
    right: int = 0

    def __post_init__(self):
        object.__setattr__(self, "left", _padding_frames("ZeroPad1D", "left", self.left))
        object.__setattr__(self, "right", _padding_frames("ZeroPad1D", "right", self.right))

    def output_steps(self, steps: int) -> int:
        return steps + self.left + self.right

    def describe(self) -> str:
        return f"ZeroPad1D({self.left}, {self.right})"


TIME_LAYERS = (Conv1D, Pool1D, ZeroPad1D)
