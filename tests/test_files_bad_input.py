"""File readers on bad input: a clear error naming the file and offset/field, or counted and
skipped; never a crash, a hang or an invalid event reaching the caller."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augury.adapters import aedat as aedat_mod
from augury.adapters.evt import read_raw_header
from augury.adapters.files import open_file
from augury.adapters.nmnist import read_nmnist_labels
from augury.events import EVENT_DTYPE, EventFormatError, SensorGeometry

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# geometry is passed for the formats that carry none, so that content is what gets tested
_GEOMETRY_OPTS = {".npy": {"geometry": "64x64"}, ".csv": {"geometry": "64x64"},
                  ".txt": {"geometry": "64x64"}}


def _read_or_error(path: Path, **opts: object) -> np.ndarray | None:
    """Read a file; return its events, or None after a clear EventFormatError."""
    try:
        src = open_file(path, **{**_GEOMETRY_OPTS.get(path.suffix.lower(), {}), **opts})
        ev = src.read_all()
    except EventFormatError as exc:
        assert str(path) in str(exc)
        return None
    g = src.geometry
    assert ev.dtype == EVENT_DTYPE
    assert np.all(ev["x"] < g.width) and np.all(ev["y"] < g.height) and np.all(ev["p"] <= 1)
    assert np.all(np.diff(ev["t"]) >= 0)
    assert src.totals.read - src.totals.dropped == ev.size
    return ev


# -- random bytes and truncations (hypothesis) -------------------------------------------------

_SUFFIXES = [".dat", ".aedat", ".bin", ".bs2", ".npy", ".npz", ".csv", ".txt"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suffix=st.sampled_from(_SUFFIXES), blob=st.binary(max_size=600),
       prefix=st.sampled_from([b"", b"%", b"% Version 2\n", b"#!AER-DAT2.0\r\n", b"\x93NUMPY",
                               b"PK\x03\x04", b"1.5 2 3 1\n"]))
def test_random_bytes_never_crash(suffix: str, blob: bytes, prefix: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"junk{suffix}"
        path.write_bytes(prefix + blob)
        _read_or_error(path)


def _real_files() -> list[str]:
    return ["prophesee/NCARS_obj_004397_td.dat", "inivation/davis240c_rotdisk.aedat",
            "nmnist/sample_nmnist.bin", "inivation/dvxplorer_sample.aedat4"]


@pytest.mark.parametrize("rel", _real_files())
def test_truncated_real_files(rel: str) -> None:
    if not DATA.is_dir():
        pytest.skip(f"real recordings not found at {DATA}")
    if rel.endswith(".aedat4") and not aedat_mod.available_aedat4_backends():
        pytest.skip("no AEDAT 4.0 backend installed")
    blob = (DATA / rel).read_bytes()
    full = open_file(DATA / rel).read_all()
    rng = np.random.default_rng(7)
    cuts = sorted({0, 1, 7, 100, len(blob) - 1, *rng.integers(0, len(blob), 6).tolist()})
    with tempfile.TemporaryDirectory() as tmp:
        for cut in cuts:
            path = Path(tmp) / f"cut{Path(rel).suffix}"
            path.write_bytes(blob[:cut])
            ev = _read_or_error(path)
            if ev is not None and not rel.endswith(".bin"):
                # what a truncated file yields is a prefix of the whole decode
                np.testing.assert_array_equal(ev, full[:ev.size])


def test_truncated_record_counted_as_malformed(tmp_path: Path) -> None:
    path = tmp_path / "t.dat"
    path.write_bytes(_dat([(5, 1, 2, 1), (6, 3, 4, 0)]) + b"\x01\x02\x03")
    src = open_file(path)
    assert src.read_all().size == 2
    assert src.totals.malformed == 1


# -- hand-made files ---------------------------------------------------------------------------


def _dat(events: list[tuple[int, int, int, int]], header: bytes = b"% Version 2\n") -> bytes:
    """DAT v2 bytes: header, type 0 / size 8, then (t, x | y << 14 | p << 28) words."""
    body = b"".join(struct.pack("<II", t, x | (y << 14) | (p << 28)) for t, x, y, p in events)
    return header + b"\x00\x08" + body


def test_dat_out_of_range_and_backwards_time_dropped(tmp_path: Path) -> None:
    path = tmp_path / "t.dat"
    path.write_bytes(_dat([(10, 1, 1, 1), (20, 400, 1, 1), (30, 2, 2, 0), (25, 3, 3, 0),
                           (40, 4, 4, 3), (45, 2, 250, 0), (50, 5, 5, 1)],
                          header=b"% Version 2\n% Width 320\n% Height 240\n"))
    src = open_file(path)
    assert src.geometry == SensorGeometry(320, 240)
    ev = src.read_all()
    np.testing.assert_array_equal(ev["t"], [10, 30, 50])  # x=400, t back, p=3, y=250 dropped
    assert src.totals.read == 7 and src.totals.dropped == 4


def test_dat_that_is_really_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.dat"
    path.write_text("these are notes, not events\n")
    with pytest.raises(EventFormatError, match=r"notes\.dat at byte offset 1: event size"):
        open_file(path)


def test_dat_header_only_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "h.dat"
    path.write_bytes(_dat([]))
    src = open_file(path)
    assert src.read_all().size == 0


def test_dat_unsupported_event_type(tmp_path: Path) -> None:
    path = tmp_path / "trig.dat"
    path.write_bytes(b"% Version 2\n\x0e\x08" + bytes(16))
    with pytest.raises(EventFormatError, match=r"byte offset 12: unsupported DAT event type 0x0E"):
        open_file(path)


def _aedat2(records: list[tuple[int, int]], chip: str = "eu.seebetter.ini.chips.davis.DAVIS240C"
            ) -> bytes:
    head = f"#!AER-DAT2.0\r\n# AEChip: {chip}\r\n# comment\r\n".encode()
    return head + b"".join(struct.pack(">II", a, t & 0xFFFFFFFF) for a, t in records)


def _davis(x: int, y: int, p: int) -> int:
    return (y << 22) | (x << 12) | (p << 11)


def test_aedat2_davis_hand_made(tmp_path: Path) -> None:
    imu = (1 << 31) | (3 << 10)
    recs = [(_davis(0, 0, 1), 100), (imu, 105), (_davis(239, 179, 0), 110),
            (_davis(300, 5, 1), 120),          # x outside 240: mirrored x < 0 → dropped
            (_davis(5, 5, 1), 105),            # time backwards → dropped
            (_davis(10, 20, 0) | (1 << 10), 130),  # external input event → others
            (_davis(10, 20, 1), (1 << 32) - 10), (_davis(11, 21, 0), 5)]  # 32-bit wrap
    path = tmp_path / "d.aedat"
    path.write_bytes(_aedat2(recs))
    src = open_file(path)
    ev = src.read_all()
    assert src.camera == "DAVIS240" and src.geometry == SensorGeometry(240, 180)
    np.testing.assert_array_equal(ev["t"], [100, 110, (1 << 32) - 10, (1 << 32) + 5])
    np.testing.assert_array_equal(ev["x"], [239, 0, 229, 228])
    np.testing.assert_array_equal(ev["y"], [179, 0, 159, 158])
    np.testing.assert_array_equal(ev["p"], [1, 0, 1, 0])
    assert src.others == 2
    assert src.totals.read == 6 and src.totals.dropped == 2 and src.totals.malformed == 0


def test_aedat2_dvs128_hand_made(tmp_path: Path) -> None:
    recs = [((3 << 8) | (5 << 1) | 1, 10), ((127 << 8) | (127 << 1), 20), (1 << 15, 30)]
    path = tmp_path / "d128.AEDAT"
    path.write_bytes(_aedat2(recs, chip="ch.unizh.ini.jaer.chip.retina.DVS128"))
    src = open_file(path)
    assert src.camera == "DVS128" and src.geometry == SensorGeometry(128, 128)
    ev = src.read_all()
    np.testing.assert_array_equal(ev["x"], [122, 0])
    np.testing.assert_array_equal(ev["y"], [124, 0])
    np.testing.assert_array_equal(ev["p"], [1, 0])
    assert src.others == 1
    # the camera option overrides the header
    assert open_file(path, camera="davis").camera == "DAVIS240"


def test_aedat2_bad_headers(tmp_path: Path) -> None:
    cases = {
        "v3.aedat": (b"#!AER-DAT3.1\r\n" + bytes(16), r"byte offset 0: AEDAT version '3\.1'"),
        "nohdr.aedat": (bytes(16), r"byte offset 0: not an AEDAT file"),
        "cut.aedat": (b"#!AER-DAT2.0\r\n# AEChip: DAV", r"byte offset 14: header line"),
        "dat.aedat": (_dat([(1, 1, 1, 1)]), r"byte offset 0: not an AEDAT file"),
        "empty.aedat": (b"", r"byte offset 0: empty file"),
    }
    for name, (blob, msg) in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(EventFormatError, match=msg):
            open_file(path)


def test_aedat4_missing_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aedat_mod, "available_aedat4_backends", lambda: ())
    path = tmp_path / "x.aedat4"
    path.write_bytes(aedat_mod.AEDAT4_MAGIC)
    with pytest.raises(ImportError, match=r"pip install 'augury\[aedat4\]'"):
        open_file(path)


def test_aedat4_not_aedat(tmp_path: Path) -> None:
    if not aedat_mod.available_aedat4_backends():
        pytest.skip("no AEDAT 4.0 backend installed")
    for name, blob in {"e.aedat4": b"", "t.aedat4": b"#!AER-DAT2.0\r\nhello\n"}.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(EventFormatError, match=rf"{name} at byte offset 0"):
            open_file(path).read_all()


def test_nmnist_overflow_and_out_of_range(tmp_path: Path) -> None:
    def rec(x: int, y: int, p: int, t: int) -> bytes:
        return bytes([x, y, (p << 7) | (t >> 16), (t >> 8) & 0xFF, t & 0xFF])

    blob = rec(1, 2, 1, 100) + rec(40, 2, 0, 200) + rec(0, 240, 0, 0) + rec(3, 4, 0, 50)
    path = tmp_path / "s.bin"
    path.write_bytes(blob + b"\x00\x01")
    src = open_file(path)
    ev = src.read_all()
    np.testing.assert_array_equal(ev["t"], [100, 50 + 8192])  # marker adds 2**13 µs
    np.testing.assert_array_equal(ev["x"], [1, 3])
    assert src.others == 1
    assert src.totals.read == 3 and src.totals.dropped == 1 and src.totals.malformed == 1


def test_text_bad_line_named(tmp_path: Path) -> None:
    path = tmp_path / "e.txt"
    path.write_text("# 10 10\n0.1 1 1 1\n0.2 2 2 0\n0.3 x 3 1\n")
    with pytest.raises(EventFormatError, match=r"e\.txt at byte offset 28: line 4: .*0\.3 x 3 1"):
        open_file(path, chunk_events=2).read_all()
    path.write_text("# 10 10\n0.1 1 1\n")
    with pytest.raises(EventFormatError, match=r"byte offset 8: line 2"):
        open_file(path).read_all()
    path.write_text("# 10 10\n-0.1 1 1 1\n")
    with pytest.raises(EventFormatError, match=r"line 2.*negative time"):
        open_file(path).read_all()


def test_text_bad_values_dropped(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("# 10x10\n1,1,1,1\n2,-1,1,1\n3,1,1,5\n4,12,1,0\n3,2,2,0\n5,2,2,-1\n")
    src = open_file(path)
    ev = src.read_all()
    # (3, 2, 2, 0) is not behind a kept event: (4, 12, 1, 0) was dropped as out of range
    np.testing.assert_array_equal(ev["t"], [1, 3, 5])
    assert src.totals.read == 6 and src.totals.dropped == 3


def test_text_without_geometry(tmp_path: Path) -> None:
    path = tmp_path / "e.txt"
    path.write_text("0.1 1 1 1\n")
    with pytest.raises(EventFormatError, match=r"e\.txt: no sensor geometry"):
        open_file(path)


def test_numpy_bad_files(tmp_path: Path) -> None:
    np.save(tmp_path / "nogeom.npy", np.zeros(3, dtype=EVENT_DTYPE))
    with pytest.raises(EventFormatError, match=r"nogeom\.npy: .*geometry='WIDTHxHEIGHT'"):
        open_file(tmp_path / "nogeom.npy")
    np.save(tmp_path / "plain.npy", np.zeros((3, 4)))
    with pytest.raises(EventFormatError, match=r"plain\.npy: expected a 1-D structured"):
        open_file(tmp_path / "plain.npy", geometry="4x4")
    np.save(tmp_path / "obj.npy", np.array([{"t": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(EventFormatError, match=r"obj\.npy: not a readable NumPy file"):
        open_file(tmp_path / "obj.npy", geometry="4x4")
    np.savez(tmp_path / "nokey.npz", ev=np.zeros(3, dtype=EVENT_DTYPE))
    with pytest.raises(EventFormatError, match=r"no 'events' array .*keys: ev"):
        open_file(tmp_path / "nokey.npz", geometry="4x4")
    neg = np.zeros(3, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "<i1")])
    neg["x"] = [1, -2, 3]
    np.save(tmp_path / "neg.npy", neg)
    with pytest.raises(EventFormatError, match=r"neg\.npy: events 0\.\.2: .*field x"):
        open_file(tmp_path / "neg.npy", geometry="4x4").read_all()
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(EventFormatError, match=r"text\.npz at byte offset 0: neither a \.npy"):
        open_file(tmp_path / "text.npz", geometry="4x4")


def test_numpy_out_of_range_and_backwards_dropped(tmp_path: Path) -> None:
    ev = np.zeros(5, dtype=EVENT_DTYPE)
    ev["t"] = [1, 2, 1, 4, 5]
    ev["x"] = [0, 1, 2, 9, 3]
    np.save(tmp_path / "ev.npy", ev)
    src = open_file(tmp_path / "ev.npy", geometry="8x8", chunk_events=2)
    got = src.read_all()
    np.testing.assert_array_equal(got["t"], [1, 2, 5])
    assert src.totals.dropped == 2


def test_labels_malformed(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("#sample #class\n1\t5\n2 x\n")
    with pytest.raises(EventFormatError, match=r"labels\.txt at byte offset 19: line 3"):
        read_nmnist_labels(path)
    path.write_text("#sample #class\n1\t5\n1\t6\n")
    with pytest.raises(EventFormatError, match=r"line 3: sample 1 listed twice"):
        read_nmnist_labels(path)


def test_dat_header_geometry_variants(tmp_path: Path) -> None:
    cases = {b"% Width 640\n% Height 480\n": SensorGeometry(640, 480),
             b"% geometry 1280x720\n": SensorGeometry(1280, 720),
             b"% format EVT2;height=720;width=1280\n": SensorGeometry(1280, 720),
             b"% Date 2017-10-31\n": SensorGeometry(304, 240)}
    for i, (header, geometry) in enumerate(cases.items()):
        path = tmp_path / f"g{i}.dat"
        path.write_bytes(_dat([(1, 2, 3, 1)], header=b"% Version 2\n" + header))
        assert open_file(path).geometry == geometry
        assert open_file(path, geometry="100x50").geometry == SensorGeometry(100, 50)


def test_aedat4_corrupted_bytes_with_aedat() -> None:
    if "aedat" not in aedat_mod.available_aedat4_backends():
        pytest.skip("the aedat package is not installed")
    if not DATA.is_dir():
        pytest.skip(f"real recordings not found at {DATA}")
    blob = (DATA / "inivation" / "dvxplorer_sample.aedat4").read_bytes()
    rng = np.random.default_rng(11)
    errors = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flipped.aedat4"
        for _ in range(12):
            b = bytearray(blob)
            for j in rng.integers(0, len(b), 8):
                b[j] = int(rng.integers(0, 256))
            path.write_bytes(bytes(b))
            errors += _read_or_error(path, backend="aedat") is None
    assert errors > 0  # most flips land in LZ4 payloads and are detected


def test_aedat4_auto_prefers_aedat(tmp_path: Path) -> None:
    have = aedat_mod.available_aedat4_backends()
    if not have or not DATA.is_dir():
        pytest.skip("needs an AEDAT 4.0 backend and the real recordings")
    src = open_file(DATA / "inivation" / "dvxplorer_sample.aedat4")
    assert src.backend == have[0]
    assert have[0] == "aedat" or "aedat" not in have


def test_numpy_missing_field_at_open(tmp_path: Path) -> None:
    arr = np.zeros(3, dtype=[("t", "<i8"), ("x", "<u2"), ("row", "<u2"), ("p", "u1")])
    np.save(tmp_path / "f.npy", arr)
    with pytest.raises(EventFormatError, match=r"f\.npy: dtype .*cannot find the y field"):
        open_file(tmp_path / "f.npy", geometry="4x4")


def test_text_layout_edge_cases(tmp_path: Path) -> None:
    path = tmp_path / "e.txt"
    path.write_bytes(b"# 10 10\r\n\r\n  0.000001, 1 ,2,1  # trailing comment\r\n"
                     b"+.000002\t3\t4\t-1\r\n3. 5 6 0")
    ev = open_file(path).read_all()
    np.testing.assert_array_equal(ev["t"], [1, 2, 3_000_000])
    np.testing.assert_array_equal(ev["p"], [1, 0, 0])
    bad = {
        b"# 10 10\n1 2 3 4 5\n": r"byte offset 8: line 2: more than 4 fields",
        b"# 10 10\n1 2 3\n": r"line 2: fewer than 4 fields",
        b"# 10 10\n1 2 3 4\n2.5 2 3 4\n": r"line 3: a '\.' in a time given in integer",
        b"# 10 10\n1234567890123456789 1 1 1\n": r"line 2: number too long",
        b"# 10 10\n1.5e3 1 1 1\n": r"line 2: unexpected character",
        b"# 10 10\n0.5 1.5 1 1\n": r"line 2: unexpected character",
    }
    for blob, msg in bad.items():
        path.write_bytes(blob)
        with pytest.raises(EventFormatError, match=msg):
            open_file(path).read_all()


# -- issue 10, defect 7: regressions ------------------------------------------------------------
# Each test names the defect it guards; each failed before its fix.


def _need_data() -> None:
    if not DATA.is_dir():
        pytest.skip(f"real recordings not found at {DATA}")


def _read_in_child(path: Path, opts: dict[str, object], env_extra: dict[str, str] | None = None,
                   timeout_s: float = 60.0) -> tuple[int, str]:
    """Read ``path`` with open_file in a child Python: (exit status, stdout + stderr).

    The child prints ``EventFormatError: <message>`` for a refused file and ``OK <n>``
    otherwise. A reader that crashes or hangs the interpreter shows up as a negative status
    or as a timeout (exit status -999) instead of taking the test run down.
    """
    code = ("import sys; from augury.adapters.files import open_file\n"
            "from augury.events import EventFormatError\n"
            f"opts = {opts!r}\n"
            "try:\n"
            "    print('OK', open_file(sys.argv[1], **opts).read_all().size)\n"
            "except EventFormatError as exc:\n"
            "    print('EventFormatError:', exc)\n")
    env = dict(os.environ)
    for key, value in (env_extra or {}).items():
        env[key] = value + (os.pathsep + env[key] if env.get(key) else "")
    try:
        res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return -999, "timeout"
    return res.returncode, res.stdout + res.stderr


def _mutated_aedat4(tmp_path: Path, offset: int, old: int, new: int) -> Path:
    blob = bytearray((DATA / "inivation" / "dvxplorer_sample.aedat4").read_bytes())
    assert blob[offset] == old  # the recording is the one the mutation was found on
    blob[offset] = new
    path = tmp_path / f"mut_{offset}.aedat4"
    path.write_bytes(bytes(blob))
    return path


@pytest.mark.parametrize(("offset", "old", "new", "how"), [
    (741932, 0, 26, r"crashed \(SIGSEGV\)"),         # dv-processing 2.0: segmentation fault
    (819719, 64, 76, r"made no progress for 3 s"),    # dv-processing 2.0: endless loop
])
def test_aedat4_dv_crash_and_hang_are_contained(tmp_path: Path, offset: int, old: int,
                                                new: int, how: str) -> None:
    """Defect 7: a one-byte mutation of dvxplorer_sample.aedat4 killed or hung the process
    with ``?backend=dv``; now the decoder runs in a child with a timeout and the file is
    refused, naming it and the offset of the packet holding the mutation."""
    _need_data()
    if "dv" not in aedat_mod.available_aedat4_backends():
        pytest.skip("dv-processing is not installed")
    path = _mutated_aedat4(tmp_path, offset, old, new)
    rc, out = _read_in_child(path, {"backend": "dv", "timeout_s": 3})
    assert rc == 0, out
    assert "EventFormatError" in out and str(path) in out and re.search(how, out), out
    at = int(re.search(r"at byte offset (\d+)", out).group(1))  # type: ignore[union-attr]
    layout = aedat_mod.read_aedat4_layout(path).packets
    row = layout[layout[:, 0] == at]
    assert row.shape[0] == 1 and at <= offset < at + 8 + row[0, 2]  # the mutated packet


def test_aedat4_library_abort_is_contained(tmp_path: Path) -> None:
    """Defect 7: a SIGABRT inside the aedat (Rust) library ended the whole process. A stand-in
    ``aedat`` module that aborts while decoding must give a clear error, not kill the caller."""
    _need_data()
    if "aedat" not in aedat_mod.available_aedat4_backends():
        pytest.skip("the aedat package is not installed")
    fake = tmp_path / "fake" / "aedat"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os\n"
        "class Decoder:\n"
        "    def __init__(self, path):\n"
        "        self.path = path\n"
        "    def id_to_stream(self):\n"
        "        return {0: {'type': 'events', 'width': 320, 'height': 240}}\n"
        "    def __iter__(self):\n"
        "        os.abort()\n"
        "        yield {}\n")
    rc, out = _read_in_child(DATA / "inivation" / "dvxplorer_sample.aedat4",
                             {"backend": "aedat", "timeout_s": 10},
                             env_extra={"PYTHONPATH": str(fake.parent)})
    assert rc == 0, out
    assert re.search(r"dvxplorer_sample\.aedat4 at byte offset \d+: AEDAT 4\.0 decoder "
                     r"\(aedat\) crashed \(SIGABRT\)", out), out


def test_aedat4_framing_checked_before_any_decoder(tmp_path: Path) -> None:
    """Defect 7: packet headers, the IOHeader and the stream geometry are checked in Python,
    so a broken frame is refused at open with the offset of the bad packet/header."""
    _need_data()
    if not aedat_mod.available_aedat4_backends():
        pytest.skip("no AEDAT 4.0 backend installed")
    blob = (DATA / "inivation" / "dvxplorer_sample.aedat4").read_bytes()
    layout = aedat_mod.read_aedat4_layout(DATA / "inivation" / "dvxplorer_sample.aedat4")
    assert layout.geometry == SensorGeometry(320, 240) and layout.event_stream == 0
    third = int(layout.packets[2, 0])
    cases = {
        "sid.aedat4": (blob[:third] + struct.pack("<i", 77) + blob[third + 4:],
                       rf"byte offset {third}: packet of stream 77"),
        "size.aedat4": (blob[:third + 4] + struct.pack("<i", 1 << 30) + blob[third + 8:],
                        rf"byte offset {third}: packet size 1073741824"),
        "cut.aedat4": (blob[:third + 20], r"byte offset 18: the data table position 945243 is "
                                          r"past the end of the file \(truncated\?\)"),
        "hdr.aedat4": (blob[:14] + struct.pack("<i", -3) + blob[18:],
                       r"byte offset 14: IOHeader size -3"),
        # same length: the XML is a length-prefixed string inside the IOHeader
        "geo.aedat4": (blob.replace(b'"sizeX" type="int">320<', b'"sizeX" type="int">65535<')
                       .replace(b"(polarity ON/OFF).", b"(polarity ONOFF)"),
                       r"sizeX/sizeY gives a sensor of 65535x240 pixels; each side must be "
                       r"in 1\.\.8192"),
    }
    for name, (data, msg) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(EventFormatError, match=rf"{name}.*{msg}"):
            open_file(path)


def test_aedat2_nul_in_header_line_refused(tmp_path: Path) -> None:
    """Defect 7: a NUL byte in an AEDAT 2.0 header line ended the header there, and the rest
    of the header was decoded as events spanning up to 593 days. Now refused, naming the
    byte offset of the NUL; the same NUL in the last header line too."""
    _need_data()
    blob = (DATA / "inivation" / "davis240c_rotdisk.aedat").read_bytes()
    starts = [0]
    while blob[starts[-1]:starts[-1] + 1] == b"#":
        starts.append(blob.index(b"\n", starts[-1]) + 1)
    for line in (5, len(starts) - 2):  # a middle line and the last header line
        at = starts[line] + 7
        path = tmp_path / f"nul{line}.aedat"
        path.write_bytes(blob[:at] + b"\x00" + blob[at + 1:])
        with pytest.raises(EventFormatError,
                           match=rf"nul{line}\.aedat at byte offset {at}: header line holds "
                                 r"the control byte 0x00"):
            open_file(path)
    # the unmodified file still reads completely (a data record may start with '#')
    assert open_file(DATA / "inivation" / "davis240c_rotdisk.aedat").read_all().size == 374_296


def test_aedat2_garbage_records_refused(tmp_path: Path) -> None:
    """Defect 7: records that are mostly implausible (random bytes after a valid header:
    outside the sensor, time going back or jumping by hours) are refused at open."""
    rng = np.random.default_rng(5)
    path = tmp_path / "junk.aedat"
    head = _aedat2([])
    path.write_bytes(head + rng.integers(0, 256, 8 * 2000, dtype=np.uint8).tobytes())
    with pytest.raises(EventFormatError, match=rf"junk\.aedat at byte offset {len(head)}: "
                                               r"not a AEDAT 2\.0 file, or a corrupt one"):
        open_file(path)


def test_absurd_geometry_refused(tmp_path: Path) -> None:
    """Defect 7: `% geometry 65535x65535` was accepted and the run grew past 3 GB. Every
    header, stored field or option giving a side above MAX_SENSOR_SIDE is refused, naming
    the file and the field; 1280x720 (the largest supported sensor) is accepted."""
    from augury.adapters.files import MAX_SENSOR_SIDE

    assert MAX_SENSOR_SIDE == 8192
    raw_ok = tmp_path / "ok.raw"
    raw_ok.write_bytes(b"% evt 3.0\n% geometry 1280x720\n% end\n" + bytes(64))
    assert open_file(raw_ok).geometry == SensorGeometry(1280, 720)
    cases = {
        "g.raw": (b"% evt 3.0\n% geometry 65535x65535\n% end\n" + bytes(64),
                  r"header field '% geometry' gives a sensor of 65535x65535"),
        "f.raw": (b"% evt 2.0\n% format EVT2;height=720;width=9000\n% end\n" + bytes(64),
                  r"header field '% format ...;width=;height=' gives a sensor of 9000x720"),
        "g.dat": (_dat([(1, 1, 1, 1)], header=b"% Version 2\n% geometry 65535x65535\n"),
                  r"header fields '% Width' / '% Height' \(or '% geometry'\) gives a sensor of "
                  r"65535x65535"),
        "g.txt": (b"# 10000 10\n1 2 3 1\n", r"header line '# WIDTH HEIGHT' gives a sensor"),
    }
    for name, (blob, msg) in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(EventFormatError, match=rf"{re.escape(str(path))}: {msg}"):
            open_file(path)
    with pytest.raises(ValueError, match=r"option geometry gives a sensor of 8193x10"):
        open_file(raw_ok, geometry="8193x10")


def test_dat_width_zero_or_missing_refused(tmp_path: Path) -> None:
    """Defect 7: DAT `% Width 0` silently fell back to 304x240; now refused, naming the
    field. A header giving only one of Width/Height is refused too."""
    cases = {
        "w0.dat": (b"% Width 0\n% Height 240\n", r"header fields '% Width' / '% Height'.* gives "
                                                 r"a sensor of 0x240 pixels"),
        "h0.dat": (b"% Width 640\n% Height 0\n", r"header fields .* gives a sensor of 640x0"),
        "wonly.dat": (b"% Width 640\n", r"the header gives '% Width' but no '% Height'"),
    }
    for name, (header, msg) in cases.items():
        path = tmp_path / name
        path.write_bytes(_dat([(1, 1, 1, 1)], header=b"% Version 2\n" + header))
        with pytest.raises(EventFormatError, match=rf"{name}: {msg}"):
            open_file(path)


def test_nmnist_content_checked(tmp_path: Path) -> None:
    """Defect 7: a .raw renamed .bin was read as N-MNIST (431,279 events "dropped", exit 0)
    and an empty .bin gave 0 events. Both are refused, as is a .bin of random bytes; a real
    N-MNIST sample still reads."""
    _need_data()
    renamed = tmp_path / "evt3_sample.bin"
    renamed.write_bytes((DATA / "prophesee" / "evt3_sample.raw").read_bytes())
    with pytest.raises(EventFormatError, match=r"evt3_sample\.bin at byte offset 0: this is "
                                               r"not N-MNIST: it starts like a Prophesee RAW"):
        open_file(renamed)
    headless = tmp_path / "headless.bin"  # the .raw's event words without their header
    raw = (DATA / "prophesee" / "evt3_sample.raw").read_bytes()
    headless.write_bytes(raw[read_raw_header(DATA / "prophesee" / "evt3_sample.raw")
                             .data_offset:])
    with pytest.raises(EventFormatError, match=r"headless\.bin at byte offset 0: not a "
                                               r"N-MNIST file, or a corrupt one"):
        open_file(headless)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(EventFormatError, match=r"empty\.bin at byte offset 0: empty N-MNIST"):
        open_file(empty)
    assert open_file(DATA / "nmnist" / "sample_nmnist.bin").read_all().size == 4325
