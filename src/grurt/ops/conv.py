"""Ops of the conv family (see :mod:`grurt.ops`)."""
from __future__ import annotations
