"""Augury: online spiking Bayesian predictive coding for event cameras."""

from augury.events import EVENT_DTYPE, EventBatch, EventFormatError, SensorGeometry

__version__ = "0.1.0"
__all__ = ["EVENT_DTYPE", "EventBatch", "EventFormatError", "SensorGeometry", "__version__"]
