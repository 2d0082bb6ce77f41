"""EVT 3.0 / 2.0 writers: round trips through our reader and through faery's, headers,
absolute time across counter wraps, and refusal of events a file cannot hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augury.adapters.evt import decode_raw_file, read_raw_header
from augury.adapters.evt_write import RawWriter, write_raw
from augury.events import EVENT_DTYPE, EventFormatError, SensorGeometry

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prophesee"
GEO = SensorGeometry(320, 240)


def _random_events(rng: np.random.Generator, n: int, t0_us: int, span_us: int,
                   geo: SensorGeometry = GEO) -> np.ndarray:
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(t0_us, t0_us + span_us + 1, n))
    ev["x"] = rng.integers(0, geo.width, n)
    ev["y"] = rng.integers(0, geo.height, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


def _read_with_faery(path: Path) -> np.ndarray:
    """faery 0.7.1's own EVT decoder (the header gives version and size)."""
    evt = pytest.importorskip("faery.extension").evt
    with evt.Decoder(path, None, None) as decoder:
        parts = [packet["events"] for packet in decoder if "events" in packet]
    empty = np.zeros(0, dtype=[("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")])
    return np.concatenate(parts) if parts else empty


def _same_as_faery(ours: np.ndarray, theirs: np.ndarray) -> bool:
    return (len(ours) == len(theirs)
            and np.array_equal(theirs["t"].astype(np.int64), ours["t"])
            and np.array_equal(theirs["x"], ours["x"])
            and np.array_equal(theirs["y"], ours["y"])
            and np.array_equal(theirs["on"].astype(np.uint8), ours["p"]))


# start times and spans that cross the EVT 3.0 24-bit and the EVT 2.0 34-bit counter wraps
TIME_CASES = [(0, 1_000_000), ((1 << 24) - 5_000, 30_000), (5 * (1 << 24) + 123, 3 << 24),
              ((1 << 34) - 1_000, 1_000_000), (10**11, 10**10)]


@pytest.mark.parametrize("fmt", ["evt3", "evt2"])
@pytest.mark.parametrize("t0_us, span_us", TIME_CASES)
def test_round_trip_through_our_reader_and_faery(tmp_path: Path, fmt: str, t0_us: int,
                                                 span_us: int) -> None:
    rng = np.random.default_rng(t0_us % 1000 + span_us % 997)
    ev = _random_events(rng, 3_000, t0_us, span_us)
    path = tmp_path / f"rt_{fmt}.raw"
    write_raw(path, ev, GEO, fmt)
    header, back = decode_raw_file(path)
    assert header.format == fmt and header.geometry == GEO
    assert back.view(np.uint8).tobytes() == ev.view(np.uint8).tobytes()
    assert _same_as_faery(ev, _read_with_faery(path))


_row = st.tuples(st.one_of(st.integers(0, 3), st.integers(0, 1 << 26)),   # dt (µs)
                 st.integers(0, GEO.height - 1), st.integers(0, 1),           # y, p
                 st.integers(0, GEO.width - 1),                               # x0
                 st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([1, 0b101])))  # x mask


def _rows_to_events(rows: list[tuple[int, ...]], t0_us: int) -> np.ndarray:
    """Rows (dt, y, p, x0, mask) -> events like a sensor's: x0 + each set bit, same t/y/p."""
    parts, t = [], t0_us
    for dt, y, p, x0, mask in rows:
        t += dt
        xs = np.array([x0 + b for b in range(32) if (mask >> b) & 1 and x0 + b < GEO.width])
        row = np.zeros(xs.size, dtype=EVENT_DTYPE)
        row["t"], row["x"], row["y"], row["p"] = t, xs, y, p
        parts.append(row)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=EVENT_DTYPE)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["evt3", "evt2"]), st.lists(_row, max_size=40),
       st.integers(0, 1 << 36), st.lists(st.integers(0, 600), max_size=4))
def test_streaming_writer_round_trips_any_events(tmp_path_factory: pytest.TempPathFactory,
                                                 fmt: str, rows: list[tuple[int, ...]],
                                                 t0_us: int, cuts: list[int]) -> None:
    ev = _rows_to_events(rows, t0_us)
    path = tmp_path_factory.mktemp("w") / "s.raw"
    bounds = [0, *sorted(c % (len(ev) + 1) for c in cuts), len(ev)]
    with RawWriter(path, GEO, fmt) as w:
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            w.write(ev[a:b])
    _, back = decode_raw_file(path)
    assert back.view(np.uint8).tobytes() == ev.view(np.uint8).tobytes()
    assert _same_as_faery(ev, _read_with_faery(path))


@pytest.mark.parametrize("fmt, lines", [
    ("evt3", ["% evt 3.0", "% format EVT3;height=240;width=320", "% geometry 320x240",
              "% end"]),
    ("evt2", ["% evt 2.0", "% format EVT2;height=240;width=320", "% geometry 320x240",
              "% end"]),
])
def test_header_is_spec_style_and_data_never_starts_with_percent(
        tmp_path: Path, fmt: str, lines: list[str]) -> None:
    path = tmp_path / "h.raw"
    write_raw(path, _random_events(np.random.default_rng(0), 10, 0x25, 100), GEO, fmt)
    raw = path.read_bytes()
    text = "\n".join(lines) + "\n"
    assert raw.startswith(text.encode())
    assert raw[len(text)] != ord("%")
    assert read_raw_header(path).data_offset == len(text)


def test_split_writes_give_the_same_bytes_as_one_write(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = [(int(rng.integers(0, 3)) * 5_000, int(rng.integers(0, 240)), int(rng.integers(0, 2)),
             int(rng.integers(0, 320)), int(rng.integers(0, 1 << 32))) for _ in range(300)]
    ev = _rows_to_events(rows, 1 << 23)  # split points fall inside vector runs
    write_raw(tmp_path / "one.raw", ev, GEO, "evt3")
    with RawWriter(tmp_path / "many.raw", GEO, "evt3") as w:
        for part in np.array_split(ev, 7):
            w.write(part)
        w.write(ev[:0])
    assert (tmp_path / "one.raw").read_bytes() == (tmp_path / "many.raw").read_bytes()
    with RawWriter(tmp_path / "flushed.raw", GEO, "evt3") as w:
        for part in np.array_split(ev, 5):
            w.write(part)
            w.flush()
            _, so_far = decode_raw_file(tmp_path / "flushed.raw")
            assert so_far.view(np.uint8).tobytes() == ev[:w.events_written].view(np.uint8).tobytes()


def test_evt2_files_are_read_by_expelliarmus(tmp_path: Path) -> None:
    expelliarmus = pytest.importorskip("expelliarmus")
    ev = _random_events(np.random.default_rng(5), 5_000, 12_345, 2_000_000)
    path = tmp_path / "x.raw"
    write_raw(path, ev, GEO, "evt2")
    ref = expelliarmus.Wizard(encoding="evt2", fpath=str(path)).read()
    assert all(np.array_equal(ref[k].astype(np.int64), ev[k].astype(np.int64)) for k in "txyp")


def test_real_recording_round_trips(tmp_path: Path) -> None:
    src = DATA / "evt3_sample.raw"
    if not src.is_file():
        pytest.skip(f"real recording {src} not found (../shared/data is absent)")
    header, ev = decode_raw_file(src)
    for fmt in ("evt3", "evt2"):
        write_raw(tmp_path / f"{fmt}.raw", ev, header.geometry, fmt)
        _, back = decode_raw_file(tmp_path / f"{fmt}.raw")
        assert back.view(np.uint8).tobytes() == ev.view(np.uint8).tobytes()


@pytest.mark.parametrize("field, value, match", [
    ("x", GEO.width, "x outside"),
    ("y", GEO.height, "y outside"),
    ("p", 2, "polarity"),
    ("t", -1, "negative t"),
])
def test_writer_refuses_events_the_file_cannot_hold(tmp_path: Path, field: str, value: int,
                                                    match: str) -> None:
    ev = _random_events(np.random.default_rng(1), 5, 10, 10)
    ev[field][3 if field != "t" else 0] = value
    with pytest.raises(EventFormatError, match=match) as exc:
        write_raw(tmp_path / "bad.raw", ev, GEO)
    assert "bad.raw" in str(exc.value)


def test_writer_refuses_time_going_backwards_within_and_across_writes(tmp_path: Path) -> None:
    ev = _random_events(np.random.default_rng(2), 6, 100, 1_000)
    with RawWriter(tmp_path / "b.raw", GEO) as w:
        w.write(ev[3:])
        with pytest.raises(EventFormatError, match="before the previous"):
            w.write(ev[:3])
        w.write(ev[5:])  # equal times are fine
    with RawWriter(tmp_path / "d.raw", GEO) as w, \
            pytest.raises(EventFormatError, match="event 2 .*decreases"):
        w.write(ev[[0, 2, 1]])
    with pytest.raises(ValueError, match="closed"):
        w.write(ev)
    with pytest.raises(ValueError, match="evt3"):
        RawWriter(tmp_path / "c.raw", GEO, "evt21")
    with pytest.raises(ValueError, match="2048x2048"):
        RawWriter(tmp_path / "c.raw", SensorGeometry(4096, 16))


def test_evt3_rows_become_32_pixel_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    rows = []
    for k in range(200):  # rows of same (t, y, p), x increasing with gaps, some near the edge
        x0 = int(rng.integers(0, GEO.width - 4))
        xs = np.unique(rng.integers(x0, min(x0 + 40, GEO.width), int(rng.integers(1, 30))))
        row = np.zeros(xs.size, dtype=EVENT_DTYPE)
        row["t"], row["x"], row["y"], row["p"] = 1_000 + 37 * k, xs, rng.integers(0, 240), k % 2
        rows.append(row)
    ev = np.concatenate(rows)
    path = tmp_path / "vec.raw"
    write_raw(path, ev, GEO, "evt3")
    _, back = decode_raw_file(path)
    assert back.view(np.uint8).tobytes() == ev.view(np.uint8).tobytes()
    assert _same_as_faery(ev, _read_with_faery(path))
    words = np.frombuffer(path.read_bytes()[read_raw_header(path).data_offset:], "<u2")
    kinds = words >> 12
    heads = np.flatnonzero(kinds == 0x3)  # VECT_BASE_X, then VECT_12, VECT_12, VECT_8
    assert heads.size > 50
    assert all(kinds[h + 1:h + 4].tolist() == [0x4, 0x4, 0x5] for h in heads)
    assert np.count_nonzero(kinds == 0x4) == 2 * heads.size == 2 * np.count_nonzero(kinds == 5)
    assert words.size < len(ev)  # fewer words than events
