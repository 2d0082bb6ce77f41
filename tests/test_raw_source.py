"""RawFileSource / open_raw: streaming equals whole-file decoding; options; bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augury.adapters.evt import decode_raw_file
from augury.adapters.evt_write import raw_header, write_raw
from augury.adapters.raw import RawFileSource, open_raw
from augury.events import EVENT_DTYPE, Counters, EventFormatError, SensorGeometry

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prophesee"
GEO = SensorGeometry(320, 240)


def _data(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"real recording {path} not found (../shared/data is absent)")
    return path


def _events(n: int, seed: int = 0, geo: SensorGeometry = GEO) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(1_000, 3_000_000, n))
    ev["x"] = rng.integers(0, geo.width, n)
    ev["y"] = rng.integers(0, geo.height, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


def _stream(source: RawFileSource) -> np.ndarray:
    parts = [c.events for c in source.chunks()]
    return np.concatenate(parts) if parts else np.zeros(0, EVENT_DTYPE)


def _bytes(a: np.ndarray) -> bytes:
    return a.view(np.uint8).tobytes()


@pytest.mark.parametrize("fmt", ["evt3", "evt2"])
@pytest.mark.parametrize("chunk_bytes", [1, 3, 7, 1000, 1 << 20])
def test_small_chunks_give_the_same_events_as_decode_raw_file(
        tmp_path: Path, fmt: str, chunk_bytes: int) -> None:
    path = tmp_path / f"s_{fmt}.raw"
    write_raw(path, _events(1_500 if chunk_bytes > 3 else 200), GEO, fmt)
    _, whole = decode_raw_file(path)
    src = RawFileSource(path, chunk_bytes=chunk_bytes)
    assert _bytes(_stream(src)) == _bytes(whole)
    assert src.decoder_counters.events == len(whole)


@pytest.mark.parametrize("name, chunk_bytes", [
    ("pedestrians_evt3_small.raw", 7), ("pedestrians_evt3_small.raw", 1001),
    ("evt3_sample.raw", 4099), ("evt2_sample.raw", 65_537), ("sparklers_evt2_v1.raw", 1 << 16),
])
def test_real_files_stream_like_whole_file(name: str, chunk_bytes: int) -> None:
    path = _data(name)
    _, whole = decode_raw_file(path)
    src = RawFileSource(path, chunk_bytes=chunk_bytes)
    chunks = list(src.chunks())
    assert _bytes(np.concatenate([c.events for c in chunks])) == _bytes(whole)
    known = [c.t_known_us for c in chunks]
    assert all(k is not None for k in known) and known == sorted(known)
    assert known[-1] >= whole["t"][-1]
    assert sum(c.counters.read for c in chunks) == len(whole)


def test_format_names_and_read_all_with_totals(tmp_path: Path) -> None:
    ev = _events(800)
    for fmt, name in (("evt3", "EVT 3.0"), ("evt2", "EVT 2.0")):
        write_raw(tmp_path / f"{fmt}.raw", ev, GEO, fmt)
        src = open_raw(tmp_path / f"{fmt}.raw")
        assert src.format == name and src.geometry == GEO
        assert _bytes(src.read_all()) == _bytes(ev)
        assert src.totals == Counters(read=800, dropped=0, malformed=0)


def test_evt21_files_by_format_override(tmp_path: Path) -> None:
    # an EVT 2.1 stream: time high 1, then 64-bit vector words (header half high)
    words = [(0x80000001 << 32), ((1 << 60) | (3 << 54) | (10 << 43) | (5 << 32) | 0b1011)]
    path = tmp_path / "v.raw"
    path.write_bytes(b"% format EVT21;height=240;width=320\n" + np.array(words, "<u8").tobytes())
    src = open_raw(path)
    assert src.format == "EVT 2.1"
    ev = src.read_all()
    assert ev["x"].tolist() == [10, 11, 13] and set(ev["t"].tolist()) == {67}


def test_batches_tile_time(tmp_path: Path) -> None:
    ev = _events(2_000)
    write_raw(tmp_path / "b.raw", ev, GEO)
    batches = list(open_raw(tmp_path / "b.raw", chunk_bytes="777").batches(batch_us=50_000))
    assert sum(len(b) for b in batches) == len(ev)
    assert all(a.t_end_us == b.t_start_us for a, b in zip(batches, batches[1:], strict=False))
    assert all(np.all((b.events["t"] >= b.t_start_us) & (b.events["t"] < b.t_end_us))
               for b in batches)


def test_open_raw_string_options(tmp_path: Path) -> None:
    path = tmp_path / "o.raw"
    write_raw(path, _events(100), GEO)
    src = open_raw(path, chunk_bytes="4096", fmt="evt3", geometry="320x240")
    assert src.chunk_bytes == 4096 and src.geometry == GEO
    assert open_raw(path, width="640", height="480").geometry == SensorGeometry(640, 480)
    assert open_raw(path, chunk_events="100").chunk_bytes == 200
    with pytest.raises(TypeError, match="bogus"):
        open_raw(path, bogus="1")
    with pytest.raises(ValueError, match="geometry"):
        open_raw(path, geometry="wide")


def test_open_source_dispatches_raw_files(tmp_path: Path) -> None:
    from augury.adapters import open_source

    path = tmp_path / "d.raw"
    write_raw(path, _events(50), GEO)
    src = open_source(str(path), chunk_bytes=64)
    assert isinstance(src, RawFileSource) and len(src.read_all()) == 50


# -------------------------------------------------------------------------------------
# bad input
# -------------------------------------------------------------------------------------


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError):
        RawFileSource("/nonexistent/dir/missing.raw")


def test_empty_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "empty.raw"
    path.write_bytes(b"")
    with pytest.raises(EventFormatError, match="empty.raw at byte offset 0"):
        RawFileSource(path)
    # with format and geometry given, an empty stream is just empty
    assert len(RawFileSource(path, fmt="evt3", geometry=GEO).read_all()) == 0


def test_header_only_file_has_no_events(tmp_path: Path) -> None:
    path = tmp_path / "head.raw"
    path.write_bytes(raw_header(GEO, "evt3"))
    src = RawFileSource(path)
    assert len(src.read_all()) == 0 and list(src.batches()) == []


def test_truncated_file_counts_the_partial_word(tmp_path: Path) -> None:
    path = tmp_path / "t.raw"
    ev = _events(300)
    write_raw(path, ev, GEO, "evt2")
    path.write_bytes(path.read_bytes()[:-3])  # cut into the last CD word
    src = RawFileSource(path, chunk_bytes=50)
    got = src.read_all()
    assert _bytes(got) == _bytes(ev[:-1])
    assert src.totals.malformed == 1 and src.decoder_counters.trailing_bytes == 1


def test_header_that_lies_about_geometry(tmp_path: Path) -> None:
    ev = _events(1_000)
    write_raw(tmp_path / "true.raw", ev, GEO)
    body = (tmp_path / "true.raw").read_bytes()[len(raw_header(GEO, "evt3")):]
    small = SensorGeometry(100, 80)
    (tmp_path / "lie.raw").write_bytes(raw_header(small, "evt3") + body)
    src = RawFileSource(tmp_path / "lie.raw", chunk_bytes=333)
    got = src.read_all()
    inside = ev[(ev["x"] < 100) & (ev["y"] < 80)]
    assert _bytes(got) == _bytes(inside)
    assert src.totals.dropped == len(ev) - len(inside) > 0
    assert src.totals.read == len(ev)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["evt3", "evt2"]), st.binary(max_size=2_000), st.integers(1, 300))
def test_random_bytes_after_a_valid_header_never_crash(
        tmp_path_factory: pytest.TempPathFactory, fmt: str, junk: bytes,
        chunk_bytes: int) -> None:
    geo = SensorGeometry(40, 30)
    path = tmp_path_factory.mktemp("junk") / "j.raw"
    path.write_bytes(raw_header(geo, fmt) + b"\x00\x00\x00\x80"[-2 if fmt == "evt3" else 0:]
                     + junk)
    src = RawFileSource(path, chunk_bytes=chunk_bytes)
    got = src.read_all()
    assert np.all(got["x"] < geo.width) and np.all(got["y"] < geo.height)
    assert np.all(np.diff(got["t"]) >= 0)
    _, whole = decode_raw_file(path)  # validation only drops, in order
    assert len(got) <= len(whole)
    assert src.totals.read - src.totals.dropped == len(got)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["evt3", "evt2"]),
       st.one_of(st.integers(0, 120), st.integers(0, 10_000)),  # header cuts, often
       st.integers(1, 500))
def test_a_file_cut_anywhere_gives_a_prefix_or_a_clear_error(
        tmp_path_factory: pytest.TempPathFactory, fmt: str, cut: int, chunk_bytes: int) -> None:
    ev = _events(300, seed=cut % 7)
    folder = tmp_path_factory.mktemp("cut")
    write_raw(folder / "full.raw", ev, GEO, fmt)
    full = (folder / "full.raw").read_bytes()
    path = folder / "cut.raw"
    path.write_bytes(full[:cut % (len(full) + 1)])
    try:
        src = RawFileSource(path, chunk_bytes=chunk_bytes)
    except EventFormatError as exc:  # cut inside the header
        assert "cut.raw" in str(exc) and cut % (len(full) + 1) < len(raw_header(GEO, fmt))
        return
    got = src.read_all()
    assert _bytes(got) == _bytes(ev[:len(got)])
    word = 2 if fmt == "evt3" else 4
    assert src.totals.malformed == (1 if (len(path.read_bytes()) - src.header.data_offset)
                                    % word else 0)
