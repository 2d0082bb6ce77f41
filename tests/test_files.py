"""File readers: real recordings decode with the documented counts; round trips; chunking.

Real recordings live in ../shared/data (see its README.md); tests that need them skip when
the directory is absent.
"""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from augury.adapters import open_source
from augury.adapters.aedat import available_aedat4_backends
from augury.adapters.files import SUFFIXES, open_file, save_npy
from augury.adapters.nmnist import read_nmnist_labels
from augury.events import EVENT_DTYPE, EventFormatError, SensorGeometry, make_events

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real recordings not found at {DATA}")
    return DATA


def _assert_valid(events: np.ndarray, geometry: SensorGeometry) -> None:
    assert events.dtype == EVENT_DTYPE
    assert np.all(events["x"] < geometry.width)
    assert np.all(events["y"] < geometry.height)
    assert np.all(events["p"] <= 1)
    assert np.all(np.diff(events["t"]) >= 0)


# -- real recordings ---------------------------------------------------------------------------


def test_dat_matches_reference_decode(data: Path) -> None:
    path = data / "prophesee" / "NCARS_obj_004397_td.dat"
    ref = np.load(data / "prophesee" / "NCARS_obj_004397_td.reference.npy")
    src = open_file(path)
    ev = src.read_all()
    assert src.format == "DAT"
    assert src.geometry == SensorGeometry(304, 240)  # old ATIS header: no Width/Height
    assert ev.size == ref.size == 4407
    for k in "txyp":
        np.testing.assert_array_equal(ev[k].astype(np.int64), ref[k].astype(np.int64))
    assert src.totals.read == 4407 and src.totals.dropped == 0 and src.totals.malformed == 0


def test_dat_numpy_path_equals_expelliarmus(data: Path, tmp_path: Path) -> None:
    # expelliarmus refuses a suffix that is not exactly ".dat"; the NumPy fallback takes over
    upper = tmp_path / "SAMPLE.DAT"
    shutil.copyfile(data / "prophesee" / "NCARS_obj_004397_td.dat", upper)
    a = open_file(data / "prophesee" / "NCARS_obj_004397_td.dat").read_all()
    b = open_file(upper, chunk_events=500).read_all()
    np.testing.assert_array_equal(a, b)


def test_dat_sample_ncars(data: Path) -> None:
    src = open_file(data / "prophesee" / "sample_ncars.dat")
    ev = src.read_all()
    assert ev.size == 2009
    assert 99_000 <= int(ev["t"][-1] - ev["t"][0]) <= 100_000
    _assert_valid(ev, src.geometry)


@pytest.mark.parametrize(("name", "count", "span_s"), [
    ("davis240c_rotdisk.aedat", 374_296, 3.17),
    ("davis240c_translboxes.aedat", 162_771, 2.07),
])
def test_aedat2_counts(data: Path, name: str, count: int, span_s: float) -> None:
    src = open_file(data / "inivation" / name)
    ev = src.read_all()
    assert src.format == "AEDAT 2.0"
    assert src.camera == "DAVIS240"
    assert src.geometry == SensorGeometry(240, 180)
    assert ev.size == count
    assert src.totals.read == count and src.totals.dropped == 0
    assert src.others > 0  # IMU samples, skipped but counted
    assert abs((ev["t"][-1] - ev["t"][0]) / 1e6 - span_s) < 0.01
    _assert_valid(ev, src.geometry)
    # the whole sensor is used, so mirroring maps onto it exactly
    assert ev["x"].min() == 0 and ev["x"].max() == 239
    assert ev["y"].min() == 0 and ev["y"].max() == 179
    assert 0.3 < ev["p"].mean() < 0.7


def test_aedat2_mirroring(data: Path) -> None:
    path = data / "inivation" / "davis240c_translboxes.aedat"
    img = open_file(path).read_all()
    raw = open_file(path, mirror="false").read_all()
    np.testing.assert_array_equal(img["t"], raw["t"])
    np.testing.assert_array_equal(img["x"], 239 - raw["x"].astype(np.int64))
    np.testing.assert_array_equal(img["y"], 179 - raw["y"].astype(np.int64))


def test_aedat2_rotating_disk_centre(data: Path) -> None:
    """The disk's rotation centre barely moves, so it is a hole in the event-count map."""
    ev = open_file(data / "inivation" / "davis240c_rotdisk.aedat").read_all()
    counts = np.zeros((180, 240))
    np.add.at(counts, (ev["y"], ev["x"]), 1)
    k = 7  # box filter
    c = np.cumsum(np.cumsum(np.pad(counts, ((1, 0), (1, 0))), 0), 1)
    box = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)
    y0, x0 = np.unravel_index(np.argmin(box[20:-20, 20:-20]), box[20:-20, 20:-20].shape)
    cx, cy = x0 + 20 + k // 2, y0 + 20 + k // 2
    assert abs(cx - 119.5) < 30 and abs(cy - 89.5) < 30
    assert box[y0 + 20, x0 + 20] < 0.2 * np.median(box)


@pytest.mark.parametrize("backend", ["dv", "aedat"])
def test_aedat4_count(data: Path, backend: str) -> None:
    if backend not in available_aedat4_backends():
        pytest.skip(f"AEDAT 4.0 backend {backend!r} is not installed")
    src = open_file(data / "inivation" / "dvxplorer_sample.aedat4", backend=backend)
    ev = src.read_all()
    assert src.format == "AEDAT 4.0"
    assert src.geometry == SensorGeometry(320, 240)
    assert ev.size == 111_954
    assert 0.58 < (ev["t"][-1] - ev["t"][0]) / 1e6 < 0.60
    _assert_valid(ev, src.geometry)


def test_aedat4_backends_agree(data: Path) -> None:
    if set(available_aedat4_backends()) != {"dv", "aedat"}:
        pytest.skip("needs both dv-processing and aedat to compare them")
    path = data / "inivation" / "dvxplorer_sample.aedat4"
    a = open_file(path, backend="dv").read_all()
    b = open_file(path, backend="aedat").read_all()
    np.testing.assert_array_equal(a, b)


def test_nmnist_sample(data: Path) -> None:
    src = open_file(data / "nmnist" / "sample_nmnist.bin")
    ev = src.read_all()
    assert src.format == "N-MNIST"
    assert src.geometry == SensorGeometry(34, 34)
    assert ev.size == 4325
    assert 305_000 < int(ev["t"][-1] - ev["t"][0]) < 315_000
    _assert_valid(ev, src.geometry)
    assert src.totals.dropped == 0


def test_nmnist_samples_and_labels(data: Path) -> None:
    train = read_nmnist_labels(data / "nmnist" / "train1K.txt")
    test = read_nmnist_labels(data / "nmnist" / "test100.txt")
    assert sorted(train) == list(range(1, 1001))
    assert sorted(test) == list(range(60001, 60101))
    assert set(train.values()) == set(range(10))
    for sample in (1, 500, 1000):
        src = open_file(data / "nmnist" / "samples" / f"{sample}.bs2")
        ev = src.read_all()
        assert 1000 < ev.size < 10_000
        assert src.totals.dropped == 0 and src.totals.malformed == 0
        _assert_valid(ev, src.geometry)


@pytest.mark.parametrize("rel", [
    "prophesee/NCARS_obj_004397_td.dat",
    "inivation/davis240c_translboxes.aedat",
    "inivation/dvxplorer_sample.aedat4",
    "nmnist/sample_nmnist.bin",
])
def test_chunked_reading_equals_whole(data: Path, rel: str) -> None:
    if rel.endswith(".aedat4") and not available_aedat4_backends():
        pytest.skip("no AEDAT 4.0 backend installed")
    whole = open_file(data / rel).read_all()
    src = open_file(data / rel, chunk_events="997")
    sizes = [c.events.size for c in src.chunks()]
    assert max(sizes) <= 997
    np.testing.assert_array_equal(open_file(data / rel, chunk_events=997).read_all(), whole)


def test_open_source_uri_with_query(data: Path) -> None:
    path = data / "nmnist" / "sample_nmnist.bin"
    src = open_source(f"file://{path}?chunk_events=100")
    assert src.chunk_events == 100
    assert src.read_all().size == 4325


# -- round trips (no real data needed) ---------------------------------------------------------


def _random_events(rng: np.random.Generator, n: int, geometry: SensorGeometry) -> np.ndarray:
    t = np.sort(rng.integers(0, 10_000_000, n))
    return make_events(t, rng.integers(0, geometry.width, n), rng.integers(0, geometry.height, n),
                       rng.integers(0, 2, n))


def test_save_npy_round_trip(tmp_path: Path) -> None:
    g = SensorGeometry(640, 480)
    ev = _random_events(np.random.default_rng(1), 5000, g)
    path = save_npy(tmp_path / "ev.npz", ev, g)
    src = open_file(path, chunk_events=333)
    assert src.geometry == g and src.format == "NumPy"
    np.testing.assert_array_equal(src.read_all(), ev)
    with np.load(path, allow_pickle=False) as npz:  # no pickle needed to read it
        assert int(npz["width"]) == 640 and int(npz["height"]) == 480
    # `augury convert` may name the archive .npy: the reader goes by the content
    as_npy = save_npy(tmp_path / "ev.npy", ev, g)
    assert as_npy == tmp_path / "ev.npy"
    src = open_file(as_npy)
    assert src.geometry == g
    np.testing.assert_array_equal(src.read_all(), ev)


def test_npy_other_dtypes_round_trip(tmp_path: Path) -> None:
    g = SensorGeometry(320, 240)
    ev = _random_events(np.random.default_rng(2), 1000, g)
    metavision = np.zeros(ev.size, dtype=[("x", "<u2"), ("y", "<u2"), ("p", "<i2"),
                                          ("t", "<i8")])
    for k in "txy":
        metavision[k] = ev[k]
    metavision["p"] = np.where(ev["p"] == 1, 1, -1)
    np.save(tmp_path / "mv.npy", metavision)
    src = open_file(tmp_path / "mv.npy", geometry="320x240", chunk_events=100)
    np.testing.assert_array_equal(src.read_all(), ev)
    seconds = np.zeros(ev.size, dtype=[("t", "<f8"), ("x", "<i4"), ("y", "<i4"), ("p", "<i1")])
    seconds["t"] = ev["t"] / 1e6
    for k in "xyp":
        seconds[k] = ev[k]
    np.savez(tmp_path / "s.npz", events=seconds, geometry=np.array("320x240"))
    np.testing.assert_array_equal(open_file(tmp_path / "s.npz").read_all(), ev)


def test_text_seconds_exact(tmp_path: Path) -> None:
    # float seconds with ns digits (Event-Camera Dataset): exact decimal → µs rounding
    path = tmp_path / "events.txt"
    path.write_text("# 240 180\n"
                    "1468939993.067416019 33 39 1\n"
                    "1468939993.067416500 34 40 0\n"
                    "1468939993.0674175 35 41 1\n"
                    "1468939994 36 42 0\n")
    src = open_file(path)
    assert src.geometry == SensorGeometry(240, 180) and src.time_unit == "s"
    ev = src.read_all()
    np.testing.assert_array_equal(ev["t"], [1468939993067416, 1468939993067417,
                                            1468939993067418, 1468939994000000])
    np.testing.assert_array_equal(ev["x"], [33, 34, 35, 36])
    np.testing.assert_array_equal(ev["p"], [1, 0, 1, 0])


def test_csv_microseconds_and_signed_polarity(tmp_path: Path) -> None:
    path = tmp_path / "events.CSV"
    path.write_text("10,1,2,-1\n20 , 3, 4, 1\n\n# comment\n30\t5\t6\t0\n")
    src = open_file(path, geometry="8x8")
    assert src.time_unit == "us"
    ev = src.read_all()
    np.testing.assert_array_equal(ev["t"], [10, 20, 30])
    np.testing.assert_array_equal(ev["p"], [0, 1, 0])
    forced = open_file(path, geometry="8x8", time_unit="s").read_all()
    np.testing.assert_array_equal(forced["t"], [10_000_000, 20_000_000, 30_000_000])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 300), chunk=st.integers(1, 400), seed=st.integers(0, 2**32 - 1),
       text=st.booleans())
def test_round_trip_any_chunking(n: int, chunk: int, seed: int, text: bool) -> None:
    import tempfile

    g = SensorGeometry(64, 48)
    ev = _random_events(np.random.default_rng(seed), n, g)
    with tempfile.TemporaryDirectory() as tmp:
        if text:
            path = Path(tmp) / "ev.txt"
            lines = [f"{t // 1_000_000}.{t % 1_000_000:06d} {x} {y} {p}"
                     for t, x, y, p in ev.tolist()]
            path.write_text("# 64x48\n" + "\n".join(lines))
            src = open_file(path, chunk_events=chunk, time_unit="s")
        else:
            src = open_file(save_npy(Path(tmp) / "ev.npz", ev, g), chunk_events=chunk)
        got = src.read_all()
    np.testing.assert_array_equal(got, ev)
    assert src.totals.read == n


# -- dispatch ----------------------------------------------------------------------------------


def test_suffix_table_complete() -> None:
    assert set(SUFFIXES) == {".raw", ".dat", ".aedat", ".aedat4", ".bin", ".bs2", ".npy",
                             ".npz", ".csv", ".txt"}


def test_raw_dispatches_lazily_to_open_raw(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Path, dict]] = []
    fake = types.ModuleType("augury.adapters.raw")
    fake.open_raw = lambda path, **opts: calls.append((path, opts)) or "raw source"  # type: ignore
    monkeypatch.setitem(sys.modules, "augury.adapters.raw", fake)
    path = tmp_path / "rec.RAW"
    path.write_bytes(b"% header\n")
    assert open_file(path, chunk_events="7") == "raw source"
    assert calls == [(path, {"chunk_events": "7"})]


def test_unknown_suffix_names_it_and_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "events.xyz"
    path.write_bytes(b"123")
    with pytest.raises(EventFormatError, match=r"'\.xyz'.*\.aedat4"):
        open_file(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.dat"):
        open_file(tmp_path / "nope.dat")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        open_source(str(tmp_path / "nope.npz"))
    (tmp_path / "dir.aedat").mkdir()
    with pytest.raises(IsADirectoryError, match="dir.aedat"):
        open_file(tmp_path / "dir.aedat")


def test_options_parsed_and_checked(tmp_path: Path) -> None:
    g = SensorGeometry(16, 16)
    path = save_npy(tmp_path / "ev.npz", _random_events(np.random.default_rng(3), 50, g), g)
    assert open_file(path, geometry="32x20").geometry == SensorGeometry(32, 20)
    assert open_file(path, geometry=(20, 10)).geometry == SensorGeometry(20, 10)
    with pytest.raises(TypeError, match="unknown option.*colour"):
        open_file(path, colour="red")
    with pytest.raises(ValueError, match="chunk_events"):
        open_file(path, chunk_events="0")
    with pytest.raises(ValueError, match="geometry"):
        open_file(path, geometry="wide")
