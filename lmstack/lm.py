"""The `LM` facade that `lmstack.load` returns (transitional: being completed by the redesign)."""

from lmstack.model.checkpoint import LM, load, save

__all__ = ["LM", "load", "save"]
