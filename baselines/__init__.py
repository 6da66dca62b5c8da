"""Training methods for the suite: one file per method, a registry mapping names to them."""
from baselines.base import Method
from baselines.registry import METHODS, get_method_class, method_names

__all__ = ["Method", "METHODS", "get_method_class", "method_names"]
