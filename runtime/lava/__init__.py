"""Optional Loihi 2 backend through Lava (lava-nc 0.10.0, Python < 3.11): see docs/lava.md.

Importing ``augury.lava`` does not import Lava; the modules that need it (``build``,
``runner``, ``layer1``, the ``procs`` package) call ``require_lava()`` first, which fails
with a message naming the extra to install. ``convert`` is NumPy only.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import sys

INSTALL_HINT = ("the Lava backend needs lava-nc 0.10.0, which installs only on Python 3.10 "
                "(or older): in a Python 3.10 venv run pip install 'augury[lava]'")


class LavaError(RuntimeError):
    """Lava is unusable here, or a Lava run failed."""


class LavaUnavailable(LavaError, ImportError):
    """lava-nc is not installed (or cannot be imported in this interpreter)."""


def require_lava() -> None:
    """Check that lava-nc can be imported here and import it (it forces the ``fork``
    start method at import).

    Raises LavaUnavailable naming the ``lava`` extra if lava-nc is missing, and LavaError if
    a multiprocessing start method was already chosen (Lava 0.10 then fails at import with
    "context has already been set").
    """
    if "lava.magma.runtime.message_infrastructure.multiprocessing" in sys.modules:
        return
    if importlib.util.find_spec("lava.magma") is None:
        raise LavaUnavailable(f"lava-nc is not installed for {sys.executable} (Python "
                              f"{sys.version_info.major}.{sys.version_info.minor}); "
                              f"{INSTALL_HINT}")
    method = mp.get_start_method(allow_none=True)
    if method is not None:
        raise LavaError(f"the multiprocessing start method is already set ({method!r}); Lava "
                        "0.10 sets 'fork' itself when imported and fails otherwise: import "
                        "augury.lava's runner before anything calls set_start_method")
    import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401
