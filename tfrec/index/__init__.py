"""Retrieval indexes over item embeddings (work in progress)."""

from tfrec.index.brute_force import BruteForceIndex

__all__ = ["BruteForceIndex"]
