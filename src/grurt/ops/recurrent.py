"""Ops of the recurrent family (see :mod:`grurt.ops`)."""
from __future__ import annotations
