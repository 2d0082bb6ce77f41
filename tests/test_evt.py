"""EVT 2.0 / 2.1 / 3.0 decoder: headers, real recordings, a slow reference twin, streaming.

The reference twin below is a deliberately obvious per-word Python decoder written from
the Prophesee specification with OpenEB's time semantics; the numba kernels must agree
with it on arbitrary word streams (including garbage), and on the real recordings with
the reference decodes shipped in ../shared/data and with expelliarmus (EVT 2.0).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augury.adapters.evt import (
    TRIGGER_DTYPE,
    EvtDecoder,
    decode_raw_file,
    read_raw_header,
)
from augury.events import EVENT_DTYPE, EventFormatError, SensorGeometry

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prophesee"

# event counts from ../shared/data/README.md
README_COUNTS = {
    "pedestrians_evt3_small.raw": (5_000, "evt3", (1280, 720)),
    "evt3_sample.raw": (219_596, "evt3", (1280, 720)),
    "evt2_sample.raw": (539_481, "evt2", (640, 480)),
    "sparklers_evt2_v1.raw": (521_252, "evt2", (640, 480)),
}


def _data(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"real recording {path} not found (../shared/data is absent)")
    return path


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Same events, compared field by field as int64 (the references use int16 x, y)."""
    return len(a) == len(b) and all(
        np.array_equal(a[k].astype(np.int64), b[k].astype(np.int64)) for k in "txyp")


# -------------------------------------------------------------------------------------
# reference twin: obvious per-word decoders (spec + OpenEB time semantics)
# -------------------------------------------------------------------------------------


def ref_evt3(words: list[int], w: int, h: int) -> tuple[list[tuple], list[tuple], int]:
    """-> (events (t, x, y, p), triggers (t, id, p), out_of_bounds)."""
    ev, trig, oob = [], [], 0
    started, high, loops, low = False, 0, 0, 0
    y = bx = None
    pol = 0
    for word in words:
        typ, c = word >> 12, word & 0xFFF
        if not started and typ != 0x8:
            continue
        t = loops * (1 << 24) + high * 4096 + low
        if typ == 0x8:
            if started:
                if high >= c + 2048:
                    loops += 1
                if c != high:
                    low = 0
            started, high = True, c
        elif typ == 0x6:
            low = c
        elif typ == 0x0:
            y = c & 0x7FF
        elif typ == 0x2:
            x = c & 0x7FF
            if y is not None:
                if x < w and y < h:
                    ev.append((t, x, y, c >> 11))
                else:
                    oob += 1
        elif typ == 0x3:
            bx, pol = c & 0x7FF, c >> 11
        elif typ in (0x4, 0x5):
            n = 12 if typ == 0x4 else 8
            for b in range(n):
                if (c >> b) & 1 and bx is not None and y is not None:
                    if bx + b < w and y < h:
                        ev.append((t, bx + b, y, pol))
                    else:
                        oob += 1
            if bx is not None:
                bx += n
        elif typ == 0xA:
            trig.append((t, (c >> 8) & 0xF, c & 1))
    return ev, trig, oob


def ref_evt2x(words: list[int], w: int, h: int, masks: list[int] | None = None):
    """EVT 2.0 (masks None) or 2.1 (header halves + masks) -> (events, triggers, oob)."""
    ev, trig, oob = [], [], 0
    base = None
    for i, word in enumerate(words):
        typ = word >> 28
        if base is None and typ != 0x8:
            continue
        if typ == 0x8:
            new = (word & 0xFFFFFFF) << 6
            if base is not None:
                new += (base >> 34) << 34
                if new < base and base - new >= ((1 << 28) - 1) * 64 - 10_000:
                    new += 1 << 34
            base = new
        elif typ in (0, 1):
            t = base + ((word >> 22) & 0x3F)
            x, y = (word >> 11) & 0x7FF, word & 0x7FF
            mask = 1 if masks is None else masks[i]
            for b in range(32):
                if (mask >> b) & 1:
                    if x + b < w and y < h:
                        ev.append((t, x + b, y, typ))
                    else:
                        oob += 1
        elif typ == 0xA:
            trig.append((base + ((word >> 22) & 0x3F), (word >> 8) & 0x1F, word & 1))
    return ev, trig, oob


def _tuples(events: np.ndarray) -> list[tuple]:
    return [(int(e["t"]), int(e["x"]), int(e["y"]), int(e["p"])) for e in events]


# word streams biased towards meaningful content, with small payloads often enough to land
# inside a small sensor, and every type (reserved ones included) possible
_evt3_word = st.tuples(
    st.sampled_from([0x0, 0x2, 0x2, 0x3, 0x4, 0x5, 0x6, 0x8, 0xA, 0x1, 0x7, 0x9, 0xB, 0xE, 0xF]),
    st.one_of(st.integers(0, 40), st.integers(0, 0xFFF)),
).map(lambda tc: (tc[0] << 12) | tc[1])

_evt2_word = st.tuples(
    st.sampled_from([0x0, 0x1, 0x1, 0x8, 0xA, 0xE, 0xF, 0x3, 0x5]),
    st.integers(0, 0x3F),
    st.one_of(st.integers(0, 40), st.integers(0, 0x7FF)),
    st.one_of(st.integers(0, 30), st.integers(0, 0x7FF)),
    st.one_of(st.integers(0, 3), st.integers(0, 0xFFFFFFF)),
).map(lambda v: (v[0] << 28) | (v[4] if v[0] == 0x8 else (v[1] << 22) | (v[2] << 11) | v[3]))

GEO_SMALL = SensorGeometry(32, 24)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _decode_all(fmt: str, data: bytes, geo: SensorGeometry, **kw) -> tuple[np.ndarray, EvtDecoder]:
    dec = EvtDecoder(fmt, geo, **kw)
    return dec.decode(data), dec


@SETTINGS
@given(st.lists(_evt3_word, max_size=300))
def test_evt3_kernel_matches_reference_twin(words: list[int]) -> None:
    data = np.array(words, dtype="<u2").tobytes()
    got, dec = _decode_all("evt3", data, GEO_SMALL)
    ev, trig, oob = ref_evt3(words, GEO_SMALL.width, GEO_SMALL.height)
    assert _tuples(got) == ev
    assert [tuple(int(v) for v in r) for r in dec.triggers] == trig
    c = dec.counters
    assert c.words == len(words)
    assert c.events == len(ev) and c.out_of_bounds == oob and c.triggers == len(trig)
    assert c.unknown_words == sum(1 for i, w in enumerate(words)
                                  if w >> 12 in (0x1, 0x9, 0xB, 0xC)
                                  and any(v >> 12 == 0x8 for v in words[:i]))


@SETTINGS
@given(st.lists(_evt2_word, max_size=300))
def test_evt2_kernel_matches_reference_twin(words: list[int]) -> None:
    data = np.array(words, dtype="<u4").tobytes()
    got, dec = _decode_all("evt2", data, GEO_SMALL)
    ev, trig, oob = ref_evt2x(words, GEO_SMALL.width, GEO_SMALL.height)
    assert _tuples(got) == ev
    assert [tuple(int(v) for v in r) for r in dec.triggers] == trig
    assert dec.counters.out_of_bounds == oob and dec.counters.words == len(words)


@SETTINGS
@given(st.lists(st.tuples(_evt2_word, st.integers(0, 0xFFFFFFFF)), max_size=120),
       st.booleans())
def test_evt21_kernel_matches_reference_twin(pairs: list[tuple[int, int]], legacy: bool) -> None:
    heads = [p[0] for p in pairs]
    masks = [p[1] for p in pairs]
    halves = [(h, m) if legacy else (m, h) for h, m in pairs]  # uint32 order in the file
    data = np.array(halves, dtype="<u4").reshape(-1).tobytes()
    got, dec = _decode_all("evt21", data, GEO_SMALL, evt21_legacy=legacy)
    ev, trig, oob = ref_evt2x(heads, GEO_SMALL.width, GEO_SMALL.height, masks)
    assert _tuples(got) == ev
    assert dec.counters.out_of_bounds == oob and dec.counters.words == len(pairs)


# -------------------------------------------------------------------------------------
# time semantics, by hand
# -------------------------------------------------------------------------------------


def _evt3(*words: int) -> bytes:
    return np.array(words, dtype="<u2").tobytes()


def test_evt3_time_loops_unrolled_and_small_backsteps_are_not_loops() -> None:
    geo = SensorGeometry(64, 64)
    y5, x7 = 0x0005, 0x2007
    data = _evt3(0x8000 | 4095, 0x6000 | 4000, y5, x7,   # t = 4095*4096 + 4000
                 0x8000 | 0, 0x6000 | 3, x7,             # 24-bit wrap: t = 2^24 + 3
                 0x8000 | 2, 0x6000 | 9, x7,              # t = 2^24 + 2*4096 + 9
                 0x8000 | 1, x7)                          # small step back: no loop, low = 0
    got, dec = _decode_all("evt3", data, geo)
    assert got["t"].tolist() == [4095 * 4096 + 4000, (1 << 24) + 3, (1 << 24) + 2 * 4096 + 9,
                                 (1 << 24) + 4096]
    assert dec.counters.loops == 1 and dec.time_us == (1 << 24) + 4096


def test_evt3_words_before_first_time_high_are_skipped_and_orphans_counted() -> None:
    geo = SensorGeometry(64, 64)
    data = _evt3(0x0003, 0x2001, 0x8000 | 7, 0x2002, 0x3005, 0x4000 | 0b101, 0x0004, 0x2001)
    got, dec = _decode_all("evt3", data, geo)
    assert _tuples(got) == [(7 * 4096, 1, 4, 0)]
    c = dec.counters
    assert c.before_time == 2 and c.orphans == 3 and c.events == 1


def test_evt3_vectors_and_triggers() -> None:
    geo = SensorGeometry(64, 64)
    data = _evt3(0x8001, 0x6000 | 10, 0x0002, 0x3000 | (1 << 11) | 50,
                 0x4000 | 0b1000_0000_0001,  # x = 50 and 61
                 0x5000 | 0b1000_0001,       # base 62: x = 62 and 69 (outside 64)
                 0xA000 | (3 << 8) | 1, 0xE014, 0xF123, 0xF123, 0x7001)
    got, dec = _decode_all("evt3", data, geo)
    assert _tuples(got) == [(4106, 50, 2, 1), (4106, 61, 2, 1), (4106, 62, 2, 1)]
    assert dec.triggers.dtype == TRIGGER_DTYPE
    assert [tuple(int(v) for v in r) for r in dec.triggers] == [(4106, 3, 1)]
    c = dec.counters
    assert c.out_of_bounds == 1 and c.others == 4 and c.triggers == 1


def test_evt2_34bit_wrap_unrolled() -> None:
    geo = SensorGeometry(64, 64)
    top = (1 << 28) - 1
    words = [0x80000000 | top, (1 << 28) | (5 << 22) | (3 << 11) | 4,
             0x80000000 | 1, (9 << 22) | (3 << 11) | 4]
    got, dec = _decode_all("evt2", np.array(words, "<u4").tobytes(), geo)
    assert got["t"].tolist() == [top * 64 + 5, (1 << 34) + 64 + 9]
    assert got["p"].tolist() == [1, 0] and dec.counters.loops == 1


# -------------------------------------------------------------------------------------
# streaming invariance
# -------------------------------------------------------------------------------------


def _split_decode(fmt: str, data: bytes, cuts: list[int], geo: SensorGeometry,
                  **kw) -> tuple[np.ndarray, EvtDecoder, np.ndarray]:
    """Decode data cut at the given offsets -> (events, decoder, all triggers)."""
    dec = EvtDecoder(fmt, geo, **kw)
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    parts, trig = [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        parts.append(dec.decode(data[a:b]))
        trig.append(dec.triggers)
    return np.concatenate(parts), dec, np.concatenate(trig)


@SETTINGS
@given(st.sampled_from(["evt3", "evt2", "evt21"]),
       st.binary(min_size=0, max_size=600),
       st.lists(st.integers(0, 10_000), max_size=12))
def test_any_split_of_random_bytes_gives_same_events_and_counters(
        fmt: str, data: bytes, cuts: list[int]) -> None:
    # garbage in: never raises, never outputs an event outside the sensor
    whole, d1 = _decode_all(fmt, data, GEO_SMALL)
    split, d2, trig = _split_decode(fmt, data, cuts, GEO_SMALL)
    assert whole.view(np.uint8).tobytes() == split.view(np.uint8).tobytes()
    assert d1.triggers.tobytes() == trig.tobytes()
    assert d1.counters == d2.counters and d1.pending_bytes == d2.pending_bytes
    assert d1.time_us == d2.time_us
    assert np.all(whole["x"] < GEO_SMALL.width) and np.all(whole["y"] < GEO_SMALL.height)
    assert d1.counters.words == len(data) // {"evt3": 2, "evt2": 4, "evt21": 8}[fmt]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=20))
def test_real_file_any_split_gives_same_events(cuts: list[int]) -> None:
    path = _data("evt3_sample.raw")
    header = read_raw_header(path)
    data = path.read_bytes()[header.data_offset:]
    whole, d1 = _decode_all("evt3", data, header.geometry)
    split, d2, _ = _split_decode("evt3", data, [c * 7 + 1 for c in cuts], header.geometry)
    assert _same(whole, split) and d1.counters == d2.counters and d1.time_us == d2.time_us


def test_decode_accepts_bytes_bytearray_memoryview_and_arrays() -> None:
    data = _evt3(0x8001, 0x6005, 0x0002, 0x2003)
    geo = SensorGeometry(8, 8)
    outs = [EvtDecoder("evt3", geo).decode(b) for b in
            (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8),
             np.frombuffer(data, "<u2"))]
    assert all(_tuples(o) == [(4101, 3, 2, 0)] for o in outs)


def test_trailing_partial_word_is_counted_after_finish() -> None:
    dec = EvtDecoder("evt2", SensorGeometry(8, 8))
    dec.decode(np.array([0x80000001], "<u4").tobytes() + b"\x01\x02")
    assert dec.pending_bytes == 2 and dec.counters.malformed == 0
    assert dec.finish() == 2
    assert dec.counters.trailing_bytes == 2 and dec.counters.malformed == 1


# -------------------------------------------------------------------------------------
# headers
# -------------------------------------------------------------------------------------


@pytest.mark.parametrize("lines, fmt, geo", [
    (["% evt 3.0", "% geometry 1280x720"], "evt3", (1280, 720)),
    (["% format EVT3;height=720;width=1280"], "evt3", (1280, 720)),
    (["% format EVT21;height=320;width=320;endianness=legacy"], "evt21", (320, 320)),
    (["% evt 2.0", "% plugin_name hal_plugin_gen3_fx3"], "evt2", (640, 480)),
    (["% evt 2.0", "% plugin_name hal_plugin_gen31_evk2"], "evt2", (640, 480)),
    (["% evt 3.0", "% plugin_name hal_plugin_gen41_evk3"], "evt3", (1280, 720)),
    (["% evt 3.0", "% plugin_name hal_plugin_imx636_evk4"], "evt3", (1280, 720)),
    (["% evt 2.1", "% plugin_name hal_plugin_genx320"], "evt21", (320, 320)),
])
def test_header_format_and_geometry(lines: list[str], fmt: str, geo: tuple[int, int]) -> None:
    text = ("\n".join(["% Date 2024-01-01 00:00:00", *lines, "% end"]) + "\n").encode()
    h = read_raw_header(io.BytesIO(text + b"\x00\x80"), source="x.raw")
    assert (h.format, (h.geometry.width, h.geometry.height)) == (fmt, geo)
    assert h.data_offset == len(text) and h.fields["Date"] == "2024-01-01 00:00:00"
    assert h.evt21_legacy == ("legacy" in text.decode())


def test_header_ends_where_binary_starts_even_if_data_starts_with_percent() -> None:
    head = b"% evt 3.0\n% geometry 64x64\n"
    data = _evt3(0x8025, 0x6000, 0x0001, 0x2002)  # first byte 0x25 == '%'
    h = read_raw_header(io.BytesIO(head + data))
    assert h.data_offset == len(head)


@pytest.mark.parametrize("text, match", [
    (b"% evt 3.0\n% plugin_name mystery\n", "geometry"),
    (b"% geometry 64x64\n", "format"),
    (b"% evt 9.0\n% geometry 64x64\n", "unknown EVT format"),
    (b"% evt 3.0\n% geometry 0x64\n", "geometry"),
    (b"\x00\x80\x01\x20", "no '%' header"),
    (b"", "no '%' header"),
])
def test_unusable_headers_raise_naming_the_file(text: bytes, match: str) -> None:
    with pytest.raises(EventFormatError, match=match) as exc:
        read_raw_header(io.BytesIO(text), source="cam.raw")
    assert "cam.raw" in str(exc.value)


def test_overrides_allow_headerless_data() -> None:
    h = read_raw_header(io.BytesIO(_evt3(0x8000)), fmt="EVT 3.0",
                        geometry=SensorGeometry(10, 10))
    assert h.format == "evt3" and h.data_offset == 0


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError):
        read_raw_header("/nonexistent/dir/x.raw")
    with pytest.raises(FileNotFoundError):
        decode_raw_file("/nonexistent/dir/x.raw")


# -------------------------------------------------------------------------------------
# real recordings
# -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_real_files_decode_with_readme_counts(name: str) -> None:
    count, fmt, (w, h) = README_COUNTS[name]
    header, ev = decode_raw_file(_data(name), chunk_bytes=1 << 18)
    assert header.format == fmt and (header.geometry.width, header.geometry.height) == (w, h)
    assert ev.dtype == EVENT_DTYPE and len(ev) == count
    assert np.all(np.diff(ev["t"]) >= 0)
    assert ev["x"].max() < w and ev["y"].max() < h


@pytest.mark.parametrize("name", ["pedestrians_evt3_small", "evt3_sample"])
def test_evt3_matches_reference_decode_exactly(name: str) -> None:
    _, ev = decode_raw_file(_data(f"{name}.raw"))
    ref = np.load(_data(f"{name}.reference.npy"))
    assert _same(ev, ref)


@pytest.mark.parametrize("name", ["evt2_sample.raw", "sparklers_evt2_v1.raw"])
def test_evt2_matches_expelliarmus_exactly(name: str) -> None:
    expelliarmus = pytest.importorskip("expelliarmus")
    path = _data(name)
    ref = expelliarmus.Wizard(encoding="evt2", fpath=str(path)).read()  # skips '%' lines
    _, ev = decode_raw_file(path)
    assert _same(ev, ref)


def test_header_that_lies_about_geometry_counts_out_of_bounds() -> None:
    path = _data("evt3_sample.raw")
    ref = np.load(_data("evt3_sample.reference.npy"))
    geo = SensorGeometry(640, 360)
    header, ev = decode_raw_file(path, geometry=geo)
    inside = ref[(ref["x"] < 640) & (ref["y"] < 360)]
    assert header.geometry == geo and _same(ev, inside)
    dec = EvtDecoder("evt3", geo)
    dec.decode(path.read_bytes()[header.data_offset:])
    assert dec.counters.out_of_bounds == len(ref) - len(inside) > 0
