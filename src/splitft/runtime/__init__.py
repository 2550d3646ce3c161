"""How calls between roles travel: in-process (default); engines plug in behind ``Runtime``."""

from splitft.runtime.base import CallFailure, Runtime
from splitft.runtime.inprocess import InProcessRuntime

__all__ = ["CallFailure", "InProcessRuntime", "Runtime"]
