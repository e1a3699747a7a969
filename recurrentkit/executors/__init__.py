"""Executors: ways to run a routing policy's semantics (reference loop; faster paths)."""

from recurrentkit.executors.reference import ReferenceLayers

__all__ = ["ReferenceLayers"]
