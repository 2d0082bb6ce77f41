"""Seeded, time-bounded fuzz of every file reader (issue 10: "no file can kill the daemon").

For each reader, cases start from a small real recording in ../shared/data (or a tiny file
written by the project's own writers) and are: the empty file, truncations, bit flips (half of
them in the header), random bytes (bare or behind the format's magic) and absurd headers.
Each case is opened and read completely. Invariants:

* no crash: the only exception allowed is EventFormatError naming the file (the project's
  clear error), never a traceback from deep inside a decoder;
* no hang: each case finishes within CASE_LIMIT_S (checked from a watchdog thread; AEDAT 4.0
  decoders run in a child process whose own timeout is shorter);
* every event returned lies inside the reader's geometry (sides ≤ MAX_SENSOR_SIDE), has
  polarity 0/1, and time never goes backwards; the counters add up.

About 300 cases in well under a minute on 2 cores; ``AUGURY_FUZZ_LONG=1`` runs ten times as
many. Each reader prints one line: cases, read, refused, crashes, hangs.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from augury.adapters import aedat as aedat_mod
from augury.adapters.evt import read_raw_header
from augury.adapters.evt_write import write_raw
from augury.adapters.files import MAX_SENSOR_SIDE, open_file, save_npy
from augury.events import EVENT_DTYPE, EventFormatError, SensorGeometry, make_events

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCALE = 10 if os.environ.get("AUGURY_FUZZ_LONG") else 1
CASE_LIMIT_S = 30.0
"""Longest a single case may take (AEDAT 4.0 worker timeout below is 5 s)."""


@dataclass
class Tally:
    """Outcome counts of one reader's fuzz run."""

    cases: int = 0
    read: int = 0
    refused: int = 0
    contained: int = 0  # refusals where a native decoder crashed or hung in its child process
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def line(self, name: str, seconds: float) -> str:
        return (f"fuzz {name}: cases={self.cases} read={self.read} refused={self.refused} "
                f"(decoder crash/hang contained: {self.contained}) "
                f"crashes={len(self.crashes)} hangs={len(self.hangs)} "
                f"violations={len(self.violations)} ({seconds:.1f} s)")


def _check_events(path: Path, opts: dict[str, object]) -> str:
    """Open and read ``path``: "" if read correctly, "refused: <message>" if refused with a
    clear error naming the file, else a description of the violated invariant. Other
    exceptions propagate (a crash)."""
    try:
        src = open_file(path, **opts)
        with src:
            ev = src.read_all()
    except EventFormatError as exc:
        if str(path) in str(exc):
            return f"refused: {exc}"
        return f"error does not name the file: {exc}"
    g = src.geometry
    if not (0 < g.width <= MAX_SENSOR_SIDE and 0 < g.height <= MAX_SENSOR_SIDE):
        return f"geometry {g} above the cap"
    if ev.dtype != EVENT_DTYPE:
        return f"dtype {ev.dtype}"
    if ev.size and (int(ev["x"].max()) >= g.width or int(ev["y"].max()) >= g.height):
        return f"event outside {g}"
    if ev.size and int(ev["p"].max()) > 1:
        return "polarity > 1"
    if ev.size > 1 and int(np.diff(ev["t"]).min()) < 0:
        return "time goes backwards"
    if src.totals.read - src.totals.dropped != ev.size:
        return f"counters: read {src.totals.read} - dropped {src.totals.dropped} != {ev.size}"
    return ""  # read correctly


def _run_case(path: Path, opts: dict[str, object], tally: Tally, label: str) -> None:
    """One case under a watchdog thread; classifies its outcome into ``tally``."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["v"] = _check_events(path, opts)
        except BaseException:  # noqa: BLE001 - a crash is what this fuzz looks for
            result["crash"] = traceback.format_exc(limit=4)

    tally.cases += 1
    worker = threading.Thread(target=target, daemon=True, name=f"fuzz-{label}")
    worker.start()
    worker.join(CASE_LIMIT_S)
    if worker.is_alive():
        tally.hangs.append(label)
    elif "crash" in result:
        tally.crashes.append(f"{label}: {result['crash']}")
    elif str(result["v"]).startswith("refused: "):
        tally.refused += 1
        text = str(result["v"])
        tally.contained += "crashed (" in text or "made no progress" in text
    elif result["v"] == "":
        tally.read += 1
    else:
        tally.violations.append(f"{label}: {result['v']}")


# -- mutations ----------------------------------------------------------------------------------


def _flip_bits(blob: bytes, rng: np.random.Generator, header_bytes: int) -> bytes:
    """Flip 1–16 bits; in half of the cases only inside the first ``header_bytes``."""
    b = bytearray(blob)
    span = header_bytes if (rng.random() < 0.5 and header_bytes > 0) else len(b)
    for _ in range(int(rng.integers(1, 17))):
        i = int(rng.integers(0, max(span, 1)))
        if i < len(b):
            b[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def _cases(seed_blob: bytes, magic: bytes, header_bytes: int, absurd: list[bytes],
           rng: np.random.Generator, n: int) -> list[tuple[str, bytes]]:
    """``n`` mutated files (plus every absurd header): (label, content)."""
    out: list[tuple[str, bytes]] = [("empty", b""), ("seed", seed_blob)]
    out += [(f"absurd{i}", blob) for i, blob in enumerate(absurd)]
    kinds = ("truncate", "flip", "random", "magic+random")
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "truncate":
            blob = seed_blob[:int(rng.integers(0, len(seed_blob)))]
        elif kind == "flip":
            blob = _flip_bits(seed_blob, rng, header_bytes)
        elif kind == "random":
            blob = rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
        else:
            blob = magic + rng.integers(0, 256, int(rng.integers(0, 4096)),
                                        dtype=np.uint8).tobytes()
        out.append((f"{kind}{i}", blob))
    return out


# -- seeds and absurd headers per reader ----------------------------------------------------


def _need(rel: str) -> bytes:
    if not DATA.is_dir():
        pytest.skip(f"real recordings not found at {DATA}")
    return (DATA / rel).read_bytes()


def _raw_seed(rel: str, keep_bytes: int) -> tuple[bytes, int]:
    blob = _need(rel)
    head = read_raw_header(DATA / rel).data_offset
    return blob[:head + keep_bytes], head


def _with_header_line(blob: bytes, offset: int, line: bytes) -> bytes:
    return blob[:offset] + line + blob[offset:]


def _seed_raw_evt3() -> tuple[bytes, bytes, int, list[bytes]]:
    blob, head = _raw_seed("prophesee/pedestrians_evt3_small.raw", 8000)
    absurd = [b"% evt 3.0\n% geometry 65535x65535\n% end\n" + blob[head:],
              b"% evt 3.0\n% geometry 0x0\n% end\n" + blob[head:],
              b"% format EVT3;height=1;width=99999\n% end\n" + blob[head:],
              b"% evt 9.9\n% geometry 640x480\n% end\n" + blob[head:],
              b"% evt 3.0\n% geometry 64\x00x48\n% end\n" + blob[head:],
              b"% evt 3.0\n% geometry 1280x720\n" + b"% pad\n" * 50_000 + blob[head:],
              b"% evt 3.0\n% geometry 1280x720\n% " + b"x" * 70_000 + b"\n" + blob[head:]]
    return blob, b"% evt 3.0\n% geometry 1280x720\n% end\n", head, absurd


def _seed_raw_evt2() -> tuple[bytes, bytes, int, list[bytes]]:
    blob, head = _raw_seed("prophesee/evt2_sample.raw", 16000)
    absurd = [_with_header_line(blob, 0, b"% geometry 65535x65535\n"),
              _with_header_line(blob, 0, b"% geometry 640x0\n"),
              _with_header_line(blob, 0, b"% format EVT2;height=480;width=-640\n")]
    return blob, b"% evt 2.0\n% geometry 640x480\n% end\n", head, absurd


def _seed_raw_written(tmp: Path) -> tuple[bytes, bytes, int, list[bytes]]:
    """A tiny EVT 3.0 file written by the project's own writer (adapters/evt_write.py)."""
    rng = np.random.default_rng(1)
    n = 500
    ev = make_events(np.sort(rng.integers(0, 50_000, n)), rng.integers(0, 64, n),
                     rng.integers(0, 48, n), rng.integers(0, 2, n))
    path = tmp / "written.raw"
    write_raw(path, ev, SensorGeometry(64, 48), "evt3")
    blob = path.read_bytes()
    head = read_raw_header(path).data_offset
    return blob, blob[:head], head, [blob.replace(b"64x48", b"64x99999", 1)]


def _seed_dat() -> tuple[bytes, bytes, int, list[bytes]]:
    blob = _need("prophesee/NCARS_obj_004397_td.dat")
    head = blob.index(b"\n% Date")  # header lines end before the type/size bytes
    head = blob.index(b"\n", head + 1) + 3
    body = blob[head - 2:]
    absurd = [b"% Version 2\n% Width 0\n% Height 240\n" + body,
              b"% Version 2\n% Width 100000\n% Height 240\n" + body,
              b"% Version 2\n% Height 240\n" + body,
              b"% Version 2\n% geometry 65535x65535\n" + body,
              b"% Version 2\n% Width 3\x004\n" + body,
              b"% Version 2\n" + b"% pad\n" * 300_000 + body]
    return blob, b"% Version 2\n\x00\x08", head, absurd


def _seed_aedat2() -> tuple[bytes, bytes, int, list[bytes]]:
    full = _need("inivation/davis240c_rotdisk.aedat")
    head = full.index(b"#End of Preferences for this AEChip\r\n") + 37
    blob = full[:head + 8 * 3000]
    magic = b"#!AER-DAT2.0\r\n# AEChip: eu.seebetter.ini.chips.davis.DAVIS240C\r\n"
    absurd = [blob[:200] + b"\x00" + blob[201:],                 # NUL in a header line
              blob[:head - 10] + b"\x00" + blob[head - 9:],      # NUL in the last line
              b"#!AER-DAT9.9\r\n" + blob[14:],
              magic + b"# x\r\n" * 5_000_000 + blob[head:head + 800]]
    return blob, magic, head, absurd


def _seed_aedat4() -> tuple[bytes, bytes, int, list[bytes]]:
    blob = _need("inivation/dvxplorer_sample.aedat4")
    head = 18 + struct.unpack("<i", blob[14:18])[0]
    absurd = [blob[:14] + struct.pack("<i", 1 << 30) + blob[18:],
              blob[:14] + struct.pack("<i", -1) + blob[18:],
              blob.replace(b'"sizeX" type="int">320<', b'"sizeX" type="int">65535<')
              .replace(b"(polarity ON/OFF).", b"(polarity ONOFF)"),
              blob[:head] + struct.pack("<ii", 0, 1 << 30) + blob[head + 8:]]
    return blob, aedat_mod.AEDAT4_MAGIC, head, absurd


def _seed_nmnist() -> tuple[bytes, bytes, int, list[bytes]]:
    blob = _need("nmnist/sample_nmnist.bin")
    raw = _need("prophesee/pedestrians_evt3_small.raw")
    return blob, b"", 0, [raw, raw[read_raw_header(DATA / "prophesee" /
                                                   "pedestrians_evt3_small.raw").data_offset:],
                          b"% evt 3.0\n", b"\x00" * 4]


def _seed_numpy(tmp: Path) -> tuple[bytes, bytes, int, list[bytes]]:
    rng = np.random.default_rng(2)
    n = 300
    ev = make_events(np.sort(rng.integers(0, 10_000, n)), rng.integers(0, 64, n),
                     rng.integers(0, 48, n), rng.integers(0, 2, n))
    path = save_npy(tmp / "seed.npz", ev, SensorGeometry(64, 48))
    blob = path.read_bytes()
    big = tmp / "big.npz"
    with open(big, "wb") as f:
        np.savez(f, events=ev, width=np.int64(65535), height=np.int64(65535))
    return blob, b"PK\x03\x04", 64, [big.read_bytes()]


def _seed_text() -> tuple[bytes, bytes, int, list[bytes]]:
    rng = np.random.default_rng(3)
    lines = [b"# 64 48\n"] + [f"{t} {rng.integers(0, 64)} {rng.integers(0, 48)} "
                              f"{rng.integers(0, 2)}\n".encode()
                              for t in np.sort(rng.integers(0, 10**6, 300))]
    blob = b"".join(lines)
    return blob, b"# 64 48\n", 8, [b"# 100000 100000\n" + blob[8:], b"# 0 0\n" + blob[8:],
                                    b"# 64 48\n" + b"1 2 3 1 " * 20_000 + b"\n"]


def _aedat4_payload_flips(blob: bytes, rng: np.random.Generator, n: int
                          ) -> list[tuple[str, bytes]]:
    """``n`` files with 1–2 bytes changed near the start of a random packet's payload (the
    LZ4 frame header and first literals): framing intact, so the native decoder sees them.
    Mutations like these made dv-processing crash (SIGSEGV) or loop forever."""
    rows = aedat_mod.read_aedat4_layout(DATA / "inivation" / "dvxplorer_sample.aedat4").packets
    out = []
    for i in range(n):
        b = bytearray(blob)
        at = int(rows[int(rng.integers(0, rows.shape[0])), 0]) + 8
        for _ in range(int(rng.integers(1, 3))):
            b[at + int(rng.integers(0, 40))] = int(rng.integers(0, 256))
        out.append((f"payload{i}", bytes(b)))
    return out


READERS: dict[str, tuple[str, int, dict[str, object]]] = {
    # name: (suffix, mutated cases before scaling, options)
    "raw-evt3": (".raw", 44, {}),
    "raw-evt2": (".raw", 36, {}),
    "raw-written": (".raw", 20, {}),
    "dat": (".dat", 40, {}),
    "aedat2": (".aedat", 36, {}),
    "aedat4": (".aedat4", 24, {"timeout_s": 5}),
    "aedat4-dv": (".aedat4", 4, {"backend": "dv", "timeout_s": 2}),
    "nmnist-bin": (".bin", 36, {}),
    "nmnist-bs2": (".bs2", 12, {}),
    "npz": (".npz", 24, {}),
    "npy-name": (".npy", 8, {}),
    "text": (".txt", 24, {}),
}


def _seed(name: str, tmp: Path) -> tuple[bytes, bytes, int, list[bytes]]:
    seeds: dict[str, Callable[[], tuple[bytes, bytes, int, list[bytes]]]] = {
        "raw-evt3": _seed_raw_evt3, "raw-evt2": _seed_raw_evt2,
        "raw-written": lambda: _seed_raw_written(tmp), "dat": _seed_dat,
        "aedat2": _seed_aedat2, "aedat4": _seed_aedat4, "aedat4-dv": _seed_aedat4,
        "nmnist-bin": _seed_nmnist,
        "nmnist-bs2": _seed_nmnist, "npz": lambda: _seed_numpy(tmp),
        "npy-name": lambda: _seed_numpy(tmp), "text": _seed_text,
    }
    return seeds[name]()


@pytest.mark.parametrize("name", list(READERS))
def test_fuzz_reader(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every case of this reader is read correctly or refused with a clear error; no crash,
    no hang, no event outside the geometry or back in time."""
    suffix, n, opts = READERS[name]
    if name.startswith("aedat4") and not aedat_mod.available_aedat4_backends():
        pytest.skip("no AEDAT 4.0 backend installed")
    if name == "aedat4-dv" and "dv" not in aedat_mod.available_aedat4_backends():
        pytest.skip("dv-processing is not installed")
    seed_blob, magic, header_bytes, absurd = _seed(name, tmp_path)
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # seeded per reader
    tally = Tally()
    start = time.monotonic()
    cases = _cases(seed_blob, magic, header_bytes, absurd, rng, n * SCALE)
    if name.startswith("aedat4"):
        cases += _aedat4_payload_flips(seed_blob, rng, (8 if name == "aedat4" else 10) * SCALE)
    for label, blob in cases:
        path = tmp_path / f"{label}{suffix}"
        path.write_bytes(blob)
        _run_case(path, dict(opts), tally, label)
        path.unlink()
    seconds = time.monotonic() - start
    with capsys.disabled():
        print("\n" + tally.line(name, seconds))
    assert not tally.crashes, "\n".join(tally.crashes[:3])
    assert not tally.hangs, tally.hangs
    assert not tally.violations, tally.violations[:5]
    assert tally.refused > 0  # the mutations do reach the error paths
    assert tally.read > 0 or name == "npy-name"  # and valid input still reads
