"""TailRawSource: a .raw file written in random-size pieces by another thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from augury.adapters.evt import decode_raw_file, read_raw_header
from augury.adapters.tail import TailRawSource, header_end, open_tail
from augury.events import Counters, EventFormatError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLE = DATA / "prophesee" / "evt3_sample.raw"
EVT2_SAMPLE = DATA / "prophesee" / "evt2_sample.raw"
WAIT_S = 10.0


def _sample_bytes(path: Path = SAMPLE) -> bytes:
    if not path.is_file():
        pytest.skip(f"real recording {path} not found (../shared/data is absent)")
    return path.read_bytes()


def _wait_until(cond: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    """Poll a condition with a deadline (a handshake, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    tick = threading.Event()
    while not cond():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.001)
    return True


def test_header_end_on_every_prefix_of_a_real_header() -> None:
    data = _sample_bytes()
    offset = read_raw_header(SAMPLE).data_offset
    for k in range(offset + 1):
        assert header_end(data[:k]) is None, k  # complete only once a data byte is there
    assert header_end(data[:offset + 1]) == offset
    assert header_end(data) == offset


def test_header_end_rules() -> None:
    assert header_end(b"% evt 3.0\n% end\n") == 16  # explicit end: no data byte needed
    assert header_end(b"% evt 3.0\n% geom") is None  # a line still being written
    assert header_end(b"% evt 3.0\n%\x01\x02") == 10  # binary data that starts with '%'
    assert header_end(b"\x00\x01") == 0
    with pytest.raises(EventFormatError, match="header line longer"):
        header_end(b"% " + b"a" * 5000)


@pytest.mark.parametrize("sample,n_events,width", [(SAMPLE, 219_596, 1280),
                                                    (EVT2_SAMPLE, 539_481, 640)])
def test_follows_a_file_written_in_random_pieces(tmp_path: Path, sample: Path, n_events: int,
                                                 width: int) -> None:
    data = _sample_bytes(sample)
    _, expected = decode_raw_file(sample)
    offset = read_raw_header(sample).data_offset
    path = tmp_path / "recording.raw"
    stop = threading.Event()
    src = TailRawSource(path, poll_s=0.001, stop=stop, idle_timeout_s=WAIT_S)
    rng = np.random.default_rng(42)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with open(path, "wb") as f:
                f.write(data[:offset // 2])  # half a header: the reader must wait
                f.flush()
                if not _wait_until(lambda: src.header_attempts >= 2):
                    raise TimeoutError("reader never polled the partial header")
                pos = offset // 2
                checkpoints = set(rng.integers(offset, len(data), 8).tolist())
                while pos < len(data):
                    n = int(rng.integers(1, 9000))  # splits words, lines, vectors
                    f.write(data[pos:pos + n])
                    f.flush()
                    pos += n
                    if any(pos - n < c <= pos for c in checkpoints):
                        # let the reader catch up mid-file, so it really follows growth
                        if not _wait_until(lambda p=pos: src.bytes_read >= p - offset):
                            raise TimeoutError("reader did not catch up")
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()  # the recording is over: the reader drains what is there, then ends

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    chunks = list(src.chunks())
    th.join(WAIT_S)
    assert not th.is_alive() and not errors
    events = np.concatenate([c.events for c in chunks])
    np.testing.assert_array_equal(events, expected)
    assert events.size == n_events
    totals = Counters()
    for c in chunks:
        totals.add(c.counters)
    assert totals.read - totals.dropped == expected.size and totals.malformed == 0
    assert len(chunks) >= 3 and src.bytes_read == len(data) - offset
    assert src.geometry.width == width and src.format in ("EVT 3.0", "EVT 2.0")


def test_idle_timeout_ends_and_trailing_partial_word_is_counted(tmp_path: Path) -> None:
    data = _sample_bytes()
    path = tmp_path / "cut.raw"
    path.write_bytes(data[:len(data) // 2 + 1])  # ends inside a 16-bit word
    src = open_tail(str(path), poll_s="0.001", idle_timeout_s="0.05")
    chunks = list(src.chunks())
    assert chunks[-1].events.size == 0 and chunks[-1].counters.malformed == 1
    assert sum(c.events.size for c in chunks) > 0


def test_missing_header_times_out_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "never.raw"
    path.write_bytes(b"% evt 3.0\n% geometry 12")
    src = TailRawSource(path, poll_s=0.001, idle_timeout_s=0.03, header_timeout_s=0.03)
    with pytest.raises(EventFormatError, match=r"never\.raw at byte offset 23.*header"):
        list(src.chunks())
    with pytest.raises(TimeoutError, match="header"):
        _ = src.geometry
    stopped = TailRawSource(tmp_path / "absent.raw", poll_s=0.001)
    stopped.close()
    assert list(stopped.chunks()) == []


def test_a_file_that_shrinks_is_an_error(tmp_path: Path) -> None:
    data = _sample_bytes()
    path = tmp_path / "rotated.raw"
    path.write_bytes(data[:100_000])
    src = TailRawSource(path, poll_s=0.001, idle_timeout_s=WAIT_S)
    it = src.chunks()
    next(it)
    with open(path, "r+b") as f:
        f.truncate(50_000)
    with pytest.raises(EventFormatError, match="shrank"):
        list(it)
