"""The spiking Bayesian predictive-coding network (see docs/model.md).

``ModelSpec`` (hyper-parameters), ``Network`` (step(batch) -> ``Readout``).
"""

from augury.model.network import Network, Readout
from augury.model.spec import ModelSpec

__all__ = ["ModelSpec", "Network", "Readout"]
