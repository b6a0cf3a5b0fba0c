"""Driving data for LSA-Bench: the `Clip` type and the datasets that produce clips."""

from data.clip import Clip

__all__ = ["Clip"]
