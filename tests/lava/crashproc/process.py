"""``Crash``: raises ``CrashError`` in its ProcessModel at Lava step ``at_step``."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class Crash(AbstractProcess):
    """Counts steps in ``n``; its model raises at step ``at_step`` (0: never)."""

    def __init__(self, *, at_step: int, name: str = "Crash") -> None:
        super().__init__(name=name)
        self.at_step = Var(shape=(1,), init=np.array([at_step]))
        self.n = Var(shape=(1,), init=np.array([0]))
        self.s_in = InPort(shape=(1,))
        self.s_out = OutPort(shape=(1,))


class CrashError(RuntimeError):
    pass


@implements(proc=Crash, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyCrashModel(PyLoihiProcessModel):
    at_step: np.ndarray = LavaPyType(np.ndarray, int)
    n: np.ndarray = LavaPyType(np.ndarray, int)
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def run_spk(self) -> None:
        self.n[0] += 1
        if self.time_step == int(self.at_step[0]):
            raise CrashError(f"crash test model raised at step {self.time_step}")
        self.s_out.send(np.array([float(self.time_step)]))
        self.s_in.recv()
