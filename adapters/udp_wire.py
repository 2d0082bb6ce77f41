"""UDP wire formats: constants, record dtypes and the parsers of URI options.

The formats themselves are documented in ``augury.adapters.udp`` and docs/protocol.md.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from augury.events import SensorGeometry

Clock = Callable[[], int]
"""A clock returning the current time in integer µs."""

MAGIC = b"AUGY"
VERSION = 1
FLAG_END = 0x01
HEADER = struct.Struct("<4sBBHIIqHHI")
HEADER_BYTES = HEADER.size  # 32
AUGURY_RECORD = np.dtype([("dt", "<u4"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
FAERY_RECORD = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
FAERY_T32_RECORD = np.dtype([("t", "<u4"), ("x", "<u2"), ("yp", "<u2")])
SPIF_TS_RECORD = np.dtype([("w", "<u4"), ("t", "<u4")])
MAX_UDP_PAYLOAD = 65507
SEQ_WINDOW = 1024

FORMATS = ("augury", "spif", "faery", "faery_t32")
_FORMAT_ALIASES = {"t64_x16_y16_on8": "faery", "t32_x16_y15_on1": "faery_t32", "aestream": "spif"}

DEFAULT_EVENTS_PER_PACKET = {
    "augury": (1472 - HEADER_BYTES) // AUGURY_RECORD.itemsize,  # 160: one 1500-byte MTU frame
    "spif": 128,  # 512 bytes: what AEStream's UDP listener reads per datagram
    "faery": 100,  # faery's default
    "faery_t32": 100,
}


def monotonic_us() -> int:
    """Default clock: ``time.monotonic_ns() // 1000`` (µs)."""
    return time.monotonic_ns() // 1000


def canonical_format(fmt: str) -> str:
    """Normalise a format name ('augury', 'spif', 'faery', 'faery_t32' or faery's names)."""
    f = _FORMAT_ALIASES.get(str(fmt).lower(), str(fmt).lower())
    if f not in FORMATS:
        raise ValueError(f"unknown UDP format {fmt!r}; known: {', '.join(FORMATS)}")
    return f


def parse_geometry(value: SensorGeometry | str | tuple[int, int] | None) -> SensorGeometry | None:
    """'640x480', (640, 480) or a SensorGeometry → SensorGeometry (None stays None)."""
    if value is None or isinstance(value, SensorGeometry):
        return value
    if isinstance(value, str):
        w, sep, h = value.lower().partition("x")
        if not sep or not w.strip().isdigit() or not h.strip().isdigit():
            raise ValueError(f"geometry must look like '640x480', got {value!r}")
        return SensorGeometry(int(w), int(h))
    w, h = value
    return SensorGeometry(int(w), int(h))


def parse_host_port(location: str) -> tuple[str, int]:
    """'host:port', '[::1]:port' or ':port' → (host, port); an empty host means all interfaces."""
    loc = location.strip().rstrip("/")
    if loc.startswith("["):
        host, sep, rest = loc[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_s = loc.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"UDP location must be host:port, got {location!r}")
    return host, int(port_s)


def _parse_bool(value: Any) -> bool:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")
    return bool(value)


def _ends(value: Any) -> int:
    """``until_end``: a count of sender ENDs (>= 0); true/false are 1/0."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"until_end must be >= 0, got {value}")
        return value
    return int(_parse_bool(value))


def _opt_float(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return float(value)
