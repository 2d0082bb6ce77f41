"""UDP sources over real loopback sockets: every format, loss/dup/reorder, malformed input."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import read_log_until
from hypothesis import given, settings
from hypothesis import strategies as st

from augury.adapters import ArraySource, open_source
from augury.adapters.udp import (
    HEADER,
    MAGIC,
    DatagramDecoder,
    SequenceTracker,
    UdpSender,
    UdpSource,
    open_udp,
    send_file,
    unroll_u32,
)
from augury.events import EVENT_DTYPE, Counters, EventBatch, SensorGeometry, make_events

GEOM = SensorGeometry(640, 480)
WAIT_S = 5.0  # upper bound on any wait; tests finish as soon as the data is in


def _events(n: int, seed: int = 0, t_span_us: int = 1_000_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_events(np.sort(rng.integers(0, t_span_us, n)), rng.integers(0, GEOM.width, n),
                       rng.integers(0, GEOM.height, n), rng.integers(0, 2, n))


def _open(fmt: str = "augury", **opts: object) -> UdpSource:
    opts.setdefault("idle_timeout_s", WAIT_S)
    return open_udp("127.0.0.1:0", format=fmt, **opts)  # type: ignore[arg-type]


def _collect(src: UdpSource, n_events: int | None = None) -> tuple[np.ndarray, Counters]:
    """Validated events until n_events arrived, or (None) until the stream ends (END packet
    with until_end, or the idle timeout)."""
    parts: list[np.ndarray] = []
    got = 0
    for chunk in src._validated():
        parts.append(chunk.events)
        got += chunk.events.size
        if n_events is not None and got >= n_events:
            break
    return (np.concatenate(parts) if parts else np.empty(0, EVENT_DTYPE)), src.totals


class _BatchReader:
    """The batches of a source, read by one thread (one batching state) while the source
    stays open, as a daemon reads a UDP source between senders."""

    def __init__(self, src: UdpSource, batch_us: int) -> None:
        self.batches: list[EventBatch] = []
        self._cond = threading.Condition()
        self._src, self._batch_us = src, batch_us
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for b in self._src.batches(batch_us=self._batch_us):
            with self._cond:
                self.batches.append(b)
                self._cond.notify_all()

    def until(self, n_events: int, timeout_s: float = WAIT_S) -> list[EventBatch]:
        """The batches so far, once they hold ``n_events`` events (or after ``timeout_s``)."""
        with self._cond:
            self._cond.wait_for(lambda: sum(len(b) for b in self.batches) >= n_events,
                                timeout_s)
            return list(self.batches)


def _batches_until(src: UdpSource, n_events: int, *, batch_us: int,
                   timeout_s: float = WAIT_S) -> list[EventBatch]:
    """Batches of ``src`` until they hold ``n_events`` events or ``timeout_s`` passes."""
    return _BatchReader(src, batch_us).until(n_events, timeout_s)


def _raw_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


@pytest.mark.parametrize("fmt,timestamps", [("augury", False), ("spif", True),
                                            ("faery", False), ("faery_t32", False)])
def test_round_trip_every_timestamped_format(fmt: str, timestamps: bool) -> None:
    ev = _events(20_000, seed=1)
    geometry = None if fmt == "augury" else "640x480"
    with _open(fmt, geometry=geometry, timestamps=int(timestamps)) as src, \
            UdpSender(*src.address, fmt=fmt, geometry=GEOM, timestamps=timestamps) as tx:
        sent = tx.send(ev)
        out, totals = _collect(src, ev.size)
        assert sent == -(-ev.size // tx.max_events_per_packet)
        np.testing.assert_array_equal(out, ev)
        assert (totals.read, totals.dropped, totals.malformed) == (ev.size, 0, 0)
        assert src.geometry == GEOM
        assert src.lost_packets == src.duplicate_packets == src.reordered_packets == 0
    assert not src.thread_alive


def test_spif_without_timestamps_is_stamped_with_the_arrival_clock() -> None:
    ev = _events(1000, seed=2)
    ticks = itertools.count(5_000, 100)
    with open_udp("127.0.0.1:0", format="spif", geometry="640x480", idle_timeout_s=WAIT_S,
                  clock=lambda: next(ticks)) as src, \
            UdpSender(*src.address, fmt="spif", max_events_per_packet=64) as tx:
        tx.send(ev)
        out, _ = _collect(src, ev.size)
    np.testing.assert_array_equal(out[["x", "y", "p"]], ev[["x", "y", "p"]])
    # one clock reading per datagram, in arrival order
    np.testing.assert_array_equal(out["t"], 5_000 + 100 * (np.arange(ev.size) // 64))


def test_spif_word_layout_matches_aestream() -> None:
    """x in bits 30..16, polarity bit 15, y in bits 14..0, bit 31 = no timestamp."""
    ev = make_events(np.array([0, 0]), np.array([3, 639]), np.array([5, 479]), np.array([1, 0]))
    tx = UdpSender("127.0.0.1", 9, fmt="spif")
    words = np.frombuffer(b"".join(bytes(p) for d in tx.encode(ev) for p in d), "<u4")
    tx.close()
    assert words.tolist() == [(1 << 31) | (3 << 16) | (1 << 15) | 5, (1 << 31) | (639 << 16) | 479]


def test_faery_own_encoder_interoperates() -> None:
    faery = pytest.importorskip("faery", reason="faery is an optional test dependency")
    from faery import udp_encoder

    ev = _events(3000, seed=3, t_span_us=1 << 33)  # > 2**32 µs: the t32 format must unroll
    fa = np.zeros(ev.size, dtype=faery.EVENTS_DTYPE)
    fa["t"], fa["x"], fa["y"], fa["on"] = ev["t"], ev["x"], ev["y"], ev["p"].astype(bool)
    for fmt in ("t64_x16_y16_on8", "t32_x16_y15_on1"):
        with _open(fmt, geometry="640x480") as src:
            udp_encoder.encode([fa], src.address, format=fmt)
            out, _ = _collect(src, ev.size)
        np.testing.assert_array_equal(out, ev)


def test_loss_duplication_and_reordering_are_counted() -> None:
    ev = _events(800, seed=4)
    with _open(reorder_window_us=10_000_000, until_end=True) as src, \
            UdpSender(*src.address, geometry=GEOM, max_events_per_packet=100) as tx:
        datagrams = tx.encode(ev)  # 8 datagrams, seq 0..7
        order = [0, 1, 3, 2, 3, 5, 7, 6]  # 4 lost, 2 and 6 late, 3 twice
        tx.send_datagrams([datagrams[i] for i in order])
        tx.end(int(ev["t"][-1]))
        out, totals = _collect(src)
        assert (src.lost_packets, src.duplicate_packets, src.reordered_packets) == (1, 1, 2)
    kept = np.concatenate([ev[i * 100:(i + 1) * 100] for i in (0, 1, 2, 3, 5, 6, 7)])
    np.testing.assert_array_equal(np.sort(out, order="t"), np.sort(kept, order="t"))
    assert totals.read == kept.size and totals.malformed == 0


def test_sequence_wrap_new_session_and_stale_packets() -> None:
    """Sequence numbers are tracked per session (two sessions merged into one stream)."""
    ev = _events(400, seed=5)
    later = ev.copy()
    later["t"] += 2_000_000
    with _open(until_end=True, sessions="merge") as src:
        a = UdpSender(*src.address, geometry=GEOM, max_events_per_packet=100, session_id=7)
        a.seq = 0xFFFFFFFE  # wraps after two datagrams: no loss
        a.send(ev)
        b = UdpSender(*src.address, geometry=GEOM, max_events_per_packet=100, session_id=8)
        held_back = b.encode(later[:100])  # seq 0
        b.send(later[100:200])  # seq 1: the new session starts here
        b.seq = 2001  # seq 2..2000 never sent: lost
        b.send(later[200:300])
        b.send_datagrams(held_back)  # 2001 numbers behind: stale, dropped
        b.end(0)
        out, _ = _collect(src)
        a.close()
        b.close()
        assert src.decoder.seq.sessions == 2
        assert (src.lost_packets, src.stale_packets, src.duplicate_packets) == (1999, 1, 0)
    np.testing.assert_array_equal(out, np.concatenate([ev, later[100:300]]))


def test_malformed_datagrams_are_counted_and_skipped() -> None:
    ev = _events(50, seed=6)
    with _open(geometry="640x480", max_datagram=2048, until_end=True) as src, \
            _raw_socket() as raw, UdpSender(*src.address, geometry=GEOM) as tx:
        good = b"".join(bytes(p) for p in tx.encode(ev[:10])[0])
        hdr = list(HEADER.unpack_from(good))
        bad_count = HEADER.pack(*hdr[:-1], hdr[-1] + 1) + good[HEADER.size:]
        bad_version = good[:4] + b"\x09" + good[5:]
        bad_geometry = HEADER.pack(*hdr[:7], 1280, 960, hdr[9]) + good[HEADER.size:]
        rng = np.random.default_rng(0)
        for dgram in (b"AUG", good[:20], rng.bytes(300), b"XXXX" + good[4:], bad_count,
                      bad_version, bad_geometry, MAGIC + bytes(4000)):
            raw.sendto(dgram, src.address)
        tx.send(ev[10:])
        tx.end(0)
        out, totals = _collect(src)
        reasons = dict(src.stats.malformed)
    np.testing.assert_array_equal(out, ev[10:])  # later good datagrams still arrive
    assert totals.malformed == 8
    assert reasons == {"short": 2, "bad_magic": 2, "bad_length": 1, "bad_version": 1,
                       "bad_geometry": 1, "oversize": 1}


def test_spif_and_faery_malformed_lengths_and_flags() -> None:
    with _open("spif", geometry="640x480") as src, _raw_socket() as raw:
        words = np.array([(1 << 31) | (2 << 16) | 3, (4 << 16) | 5, (1 << 31) | 7], "<u4")
        raw.sendto(b"\x01\x02\x03", src.address)  # not a whole word
        raw.sendto(words.tobytes(), src.address)  # middle word claims a timestamp follows
        out, totals = _collect(src, 2)
    assert out[["x", "y"]].tolist() == [(2, 3), (0, 7)]
    assert totals.malformed == 2 and src.stats.malformed == {"bad_length": 1,
                                                               "spif_timestamp_flag": 1}
    with _open("faery", geometry="640x480") as src, _raw_socket() as raw:
        raw.sendto(bytes(14), src.address)
        raw.sendto(bytes(13), src.address)
        out, totals = _collect(src, 1)
    assert out.size == 1 and totals.malformed == 1


def test_full_ring_drops_are_counted_not_silent() -> None:
    ev = _events(5000, seed=7)
    with _open(capacity_events=1000, until_end=True) as src, \
            UdpSender(*src.address, geometry=GEOM) as tx:
        tx.send(ev)
        tx.end(0)
        src._thread.join(WAIT_S)  # the receiver thread ends after END; nothing consumed yet
        out, totals = _collect(src)
    assert out.size <= 1000
    assert src.ring.dropped_events == ev.size - out.size > 0
    assert totals.read == ev.size and totals.dropped == src.ring.dropped_events
    np.testing.assert_array_equal(out, ev[ev.size - out.size:])  # the newest survive


def test_close_from_another_thread_ends_a_blocked_consumer() -> None:
    src = _open(idle_timeout_s=None)
    got: list[int] = []
    th = threading.Thread(target=lambda: got.extend(c.events.size for c in src.chunks()),
                          daemon=True)
    th.start()
    with UdpSender(*src.address, geometry=GEOM) as tx:
        tx.send(_events(10))
    src.close()
    th.join(WAIT_S)
    assert not th.is_alive() and not src.thread_alive and src._sock.fileno() == -1
    assert sum(got) <= 10


def test_geometry_is_learned_from_augury_or_times_out() -> None:
    with _open(geometry_timeout_s=0.05) as src:
        with pytest.raises(TimeoutError, match="geometry"):
            _ = src.geometry
        with UdpSender(*src.address, geometry="64x48") as tx:
            tx.heartbeat(123)
        assert src.decoder.geometry_known.wait(WAIT_S)
        assert src.geometry == SensorGeometry(64, 48)


def test_options_and_dispatch() -> None:
    with pytest.raises(ValueError, match="geometry=WIDTHxHEIGHT is required"):
        open_udp("127.0.0.1:0", format="spif")
    with pytest.raises(ValueError, match="unknown udp option"):
        open_udp("127.0.0.1:0", colour="red")
    with pytest.raises(ValueError, match="unknown UDP format"):
        open_udp("127.0.0.1:0", format="morse")
    with pytest.raises(ValueError, match="host:port"):
        open_udp("localhost")
    with pytest.raises(ValueError, match="overflow"):
        open_udp("127.0.0.1:0", overflow="sometimes")
    src = open_source("udp://127.0.0.1:0?format=spif&geometry=64x48&timestamps=1&poll_s=0.01")
    try:
        assert isinstance(src, UdpSource) and src.geometry == SensorGeometry(64, 48)
        assert src.decoder.timestamps and src.rcvbuf_bytes >= 1 << 20
    finally:
        src.close()
    assert not src.thread_alive and src._sock.fileno() == -1
    src.close()  # idempotent


def test_sending_to_nobody_does_not_raise() -> None:
    with _raw_socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with UdpSender("127.0.0.1", port, geometry=GEOM) as tx:
        for _ in range(3):
            tx.send(_events(500))
        tx.end(0)
    assert tx.packets_sent == 3 * 4 + 3 and tx.refused > 0  # END is sent three times


def test_send_file_asap_and_realtime_pacing() -> None:
    ev = _events(3000, seed=8, t_span_us=50_000)
    with _open(until_end=True) as src:
        stats = send_file(ArraySource(ev, GEOM), f"udp://127.0.0.1:{src.address[1]}",
                          pace="asap")
        out, _ = _collect(src)
    np.testing.assert_array_equal(out, ev)
    assert stats.events == ev.size

    sparse = make_events(np.array([0, 10_000, 30_000]), np.zeros(3), np.zeros(3), np.ones(3))
    now = [100.0]

    def sleep(d: float) -> None:
        now[0] += d

    with _open(until_end=True) as src:
        stats = send_file(ArraySource(sparse, GEOM), f"udp://127.0.0.1:{src.address[1]}",
                          pace="realtime", speed=2.0, clock=lambda: now[0], sleep=sleep)
        out, _ = _collect(src)
        t_known = src.stats.heartbeats
    np.testing.assert_array_equal(out, sparse)
    assert stats.wall_s == pytest.approx(stats.span_us / 1e6 / 2.0)
    assert stats.span_us == 31_000 and t_known > 0  # empty 1 ms windows sent as heartbeats


def test_unroll_u32_across_calls() -> None:
    t = np.array([(1 << 32) - 10, (1 << 32) - 1, (1 << 32) + 4, (1 << 32) + (3 << 30),
                  (1 << 33) + 7], dtype=np.int64)
    t32 = (t & 0xFFFFFFFF).astype(np.uint32)
    a, last = unroll_u32(t32[:2], None)
    b, last = unroll_u32(t32[2:], last)
    np.testing.assert_array_equal(np.concatenate([a, b]), t)
    assert last == int(t[-1])


def _burst(datagrams: list[bytes]) -> tuple[bytearray, list[tuple[int, int]]]:
    """Datagrams laid out back to back in one buffer, as the receiver does."""
    spans, off = [], 0
    for d in datagrams:
        spans.append((off, len(d)))
        off += len(d)
    return bytearray(b"".join(datagrams)), spans


@settings(max_examples=40, deadline=None)
@given(fmt=st.sampled_from(["augury", "spif", "faery", "faery_t32"]), seed=st.integers(0, 999),
       cuts=st.lists(st.integers(0, 30), max_size=6))
def test_decoding_is_invariant_to_how_datagrams_are_grouped(fmt: str, seed: int,
                                                            cuts: list[int]) -> None:
    """The numba kernels give the sent events (u32 wraps unrolled as ``unroll_u32`` does),
    whether the datagrams come in one burst or in several."""
    ev = _events(600, seed=seed, t_span_us=1 << 34)  # ~4 wraps of a u32 µs clock
    tx = UdpSender("127.0.0.1", 9, fmt=fmt, geometry=GEOM, max_events_per_packet=20,
                   timestamps=True)
    datagrams = [b"".join(bytes(p) for p in d) for d in tx.encode(ev)]
    tx.close()
    whole = DatagramDecoder(fmt, GEOM, timestamps=True)
    buf, spans = _burst(datagrams)
    np.testing.assert_array_equal(whole.decode(buf, spans, [0] * len(spans)).events, ev)
    parts = []
    split = DatagramDecoder(fmt, GEOM, timestamps=True)
    bounds = sorted({0, len(datagrams), *[c for c in cuts if c < len(datagrams)]})
    for a, b in itertools.pairwise(bounds):
        buf, spans = _burst(datagrams[a:b])
        parts.append(split.decode(buf, spans, [0] * len(spans)).events)
    np.testing.assert_array_equal(np.concatenate(parts), ev)
    if fmt in ("spif", "faery_t32"):
        t, _ = unroll_u32((ev["t"] & 0xFFFFFFFF).astype(np.uint32), None)
        np.testing.assert_array_equal(t, ev["t"])


@settings(max_examples=80, deadline=None)
@given(fmt=st.sampled_from(["augury", "spif", "faery", "faery_t32"]), data=st.data())
def test_corrupted_datagrams_never_crash_the_decoder(fmt: str, data: st.DataObject) -> None:
    """Flipped bytes, truncation and garbage: counted or decoded, never an exception."""
    ev = _events(60, seed=data.draw(st.integers(0, 99)))
    tx = UdpSender("127.0.0.1", 9, fmt=fmt, geometry=GEOM, max_events_per_packet=20,
                   timestamps=True)
    datagrams = [bytearray(b"".join(bytes(p) for p in d)) for d in tx.encode(ev)]
    tx.close()
    for d in datagrams:
        for _ in range(data.draw(st.integers(0, 4))):
            d[data.draw(st.integers(0, len(d) - 1))] = data.draw(st.integers(0, 255))
    datagrams = [bytes(d[:data.draw(st.integers(0, len(d)))]) if data.draw(st.booleans())
                 else bytes(d) for d in datagrams]
    datagrams.append(data.draw(st.binary(max_size=300)))
    dec = DatagramDecoder(fmt, GEOM, timestamps=True, max_datagram=400)
    buf, spans = _burst(datagrams)
    chunk = dec.decode(buf, spans, [0] * len(spans))
    assert chunk.counters.read - chunk.counters.dropped == chunk.events.size <= ev.size + 300
    assert dec.stats.datagrams == len(datagrams)
    assert chunk.counters.malformed == dec.stats.malformed_total


def test_reordering_within_one_burst_is_repaired_by_the_decoder() -> None:
    ev = _events(400, seed=9)
    tx = UdpSender("127.0.0.1", 9, geometry=GEOM, max_events_per_packet=100)
    d = [b"".join(bytes(p) for p in parts) for parts in tx.encode(ev)]
    tx.close()
    dec = DatagramDecoder("augury", None)
    buf, spans = _burst([d[0], d[2], d[1], d[3], d[2]])
    chunk = dec.decode(buf, spans, [0] * 5)
    np.testing.assert_array_equal(chunk.events, ev)  # sorted again, duplicate dropped
    assert (dec.seq.reordered, dec.seq.duplicates, dec.seq.lost) == (1, 1, 0)
    assert chunk.counters == Counters(read=400)


def _oracle(seqs: list[int]) -> tuple[int, int, int]:
    """(lost, duplicates, reordered) by definition, for sequences within one window."""
    first, seen, high, dup, reo = seqs[0], set(), -1, 0, 0
    for s in seqs:
        if s in seen:
            dup += 1
            continue
        if s < high:
            reo += 1
        seen.add(s)
        high = max(high, s)
    lost = sum(1 for s in range(first, high + 1) if s not in seen)
    return lost, dup, reo


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=200),
       st.sampled_from([0, (1 << 32) - 150]))
def test_sequence_tracker_matches_the_definition(seqs: list[int], offset: int) -> None:
    """Same verdicts wherever the u32 sequence counter wraps."""
    tr = SequenceTracker()
    for s in seqs:
        tr.observe(1, (s + offset) & 0xFFFFFFFF)
    assert (tr.lost, tr.duplicates, tr.reordered) == _oracle(seqs)
    assert tr.stale == 0


def test_header_layout_is_documented_size() -> None:
    assert HEADER.size == 32
    hdr = HEADER.pack(MAGIC, 1, 0, 32, 1, 2, -5, 640, 480, 0)
    assert struct.unpack_from("<4s", hdr)[0] == b"AUGY" and hdr[6:8] == b"\x20\x00"


def test_a_new_sender_session_restarts_the_clock() -> None:
    """A sender that restarts (new session id) with its clock back at 0, e.g. `augury send`
    run twice: its events are handed on, not dropped as going back in time, and batching
    starts again at its first event."""
    ev = _events(600, seed=9, t_span_us=300_000)
    with _open(idle_timeout_s=None) as src:
        a = UdpSender(*src.address, geometry=GEOM, max_events_per_packet=100, session_id=1)
        a.send(ev)
        a.end(300_000)  # as `augury send` does: the next sender may take over
        b = UdpSender(*src.address, geometry=GEOM, max_events_per_packet=100, session_id=2)
        b.send(ev)  # the same times again
        b.end(300_000)
        batches = _batches_until(src, 2 * ev.size, batch_us=10_000)
        a.close()
        b.close()
        assert src.decoder.seq.sessions == 2
    got = np.concatenate([bt.events for bt in batches])
    np.testing.assert_array_equal(got, np.concatenate([ev, ev]))
    assert src.totals.dropped == 0
    starts = [bt.t_start_us for bt in batches]
    back = [i for i in range(1, len(starts)) if starts[i] < starts[i - 1]]
    assert len(back) == 1  # one jump back in the batches' time, where the new sender starts
    assert all(bt.t_end_us > bt.t_start_us for bt in batches)


def test_a_lost_end_is_made_good_by_its_repeat_and_repeats_are_not_drops() -> None:
    """A sender repeats END (one sequence number) because one datagram may be lost. With the
    first copy lost, the next sender is refused (``other``) only until a repeat arrives, then
    takes over; copies of an END already acted on are ``end_repeat``: neither drops nor
    duplicates, whether they arrive before or after the takeover (single) or under merge."""
    from augury.adapters.udp_session import SessionGate

    g = SessionGate()
    assert g.admit(1) == "keep"
    assert g.admit(2) == "other"  # session 1's first END was lost: 2 must wait
    assert g.admit(1, end=True) == "keep"  # the repeat arrives
    g.end(1)
    assert g.admit(1, end=True) == "end_repeat"  # a later copy, before anyone takes over
    assert g.admit(2) == "restart"
    assert g.admit(1, end=True) == "end_repeat"  # a copy arriving after the takeover
    assert g.admit(1) == "other"  # data of an ended session is still refused
    assert (g.other_session, g.after_end, g.end_repeats, g.takeovers) == (2, 0, 2, 1)
    merged = SessionGate("merge")
    assert merged.admit(5, end=True) == "keep"
    merged.end(5)
    assert merged.admit(5, end=True) == "end_repeat" and merged.admit(6) == "keep"


def test_end_repeats_are_not_counted_as_drops_or_duplicates() -> None:
    ev = _events(300, seed=21, t_span_us=100_000)
    with _open(idle_timeout_s=None, until_end=2) as src:
        for session in (1, 2):
            with UdpSender(*src.address, geometry=GEOM, session_id=session,
                           max_events_per_packet=100) as tx:
                tx.send(ev)
                tx.end(100_000, repeats=3, interval_s=0.001)
        out, totals = _collect(src)
        stats = src.source_stats()
    np.testing.assert_array_equal(out, np.concatenate([ev, ev]))
    # the first sender's two copies arrive before the second sender's data (they are sent
    # first); the second's may come after the receiver stopped at its second END
    assert stats["end_packets"] == 2 and 2 <= stats["end_repeats"] <= 4
    assert (stats["after_end"], stats["other_session"], stats["duplicate_packets"]) == (0, 0, 0)
    assert stats["session_takeovers"] == 1 and totals.dropped == 0


# --- issue 10, defect 5: end of stream, waiting for a sender, several senders, counts -----


def test_end_packet_flushes_the_last_window_while_listening() -> None:
    """Without until_end (a daemon waiting for the next sender), a sender's END hands on its
    last batch window at once; it used to wait for an event that never came."""
    ev = _events(3000, seed=11, t_span_us=55_000)  # the last 10 ms window is [50, 60) ms
    with _open(idle_timeout_s=None, session_idle_s=None) as src:  # no idle flush: END only
        send_file(ArraySource(ev, GEOM), f"udp://127.0.0.1:{src.address[1]}", pace="asap")
        batches = _batches_until(src, ev.size, batch_us=10_000)
        assert src.thread_alive  # still listening
        assert src.stats.end_flushes == 1
    got = np.concatenate([b.events for b in batches])
    np.testing.assert_array_equal(got, ev)
    assert batches[-1].t_end_us == 60_000


@pytest.mark.parametrize("fmt", ["augury", "spif"])
def test_a_silent_sender_is_flushed_after_the_idle_time(fmt: str) -> None:
    """A sender that stops without END (crashed, or a format without END) has its last
    window flushed once it has been silent for session_idle_s; a later event of the same
    sender older than the flushed time is dropped and counted, never handed on backwards."""
    ev = _events(1000, seed=12, t_span_us=25_000)
    with _open(fmt, geometry="640x480", timestamps=1, idle_timeout_s=None,
               session_idle_s=0.2) as src, \
            UdpSender(*src.address, fmt=fmt, geometry=GEOM, timestamps=True) as tx:
        tx.send(ev)
        reader = _BatchReader(src, 10_000)
        batches = reader.until(ev.size)
        got = np.concatenate([b.events for b in batches])
        np.testing.assert_array_equal(got, ev)
        assert batches[-1].t_end_us == 30_000 and src.stats.idle_flushes == 1
        late = make_events(np.array([29_000, 31_000]), np.array([1, 2]), np.array([1, 2]),
                           np.array([0, 1]))
        tx.send(late)
        tx.send(make_events(np.array([50_000]), np.array([3]), np.array([3]), np.array([1])))
        more = reader.until(ev.size + 2)[len(batches):]
        assert [b.events["t"].tolist() for b in more if len(b)] == [[31_000], [50_000]]
        assert src.stats.late_events == 1


def test_the_last_window_of_evt3_sample_is_processed(shared_data: Path) -> None:
    """The issue's figure: 185,646 of the 219,596 events of evt3_sample.raw (its last 10 ms
    window) never left a listening UDP source."""
    from augury.adapters import open_source as open_file

    rec = shared_data / "prophesee" / "evt3_sample.raw"
    with open_file(str(rec)) as f:
        n = f.read_all().size
    assert n == 219_596
    with _open(idle_timeout_s=None, session_idle_s=None) as src:
        with open_file(str(rec)) as f:
            sent = send_file(f, f"udp://127.0.0.1:{src.address[1]}", pace="asap")
        batches = _batches_until(src, n, batch_us=10_000, timeout_s=30.0)
        assert src.lost_packets == 0
    assert sent.events == n
    assert sum(len(b) for b in batches) == n


def test_a_second_sender_is_counted_and_dropped_until_the_first_ends() -> None:
    """sessions=single (default): two senders with their own clocks, datagrams interleaved:
    the first is received whole, without a single clock restart; the second is counted and
    dropped until the first sends END, then it takes over as one restart."""
    a_ev = _events(1000, seed=13, t_span_us=100_000)
    b_ev = a_ev.copy()
    b_ev["t"] += 7_000_000  # another clock
    with _open(idle_timeout_s=None, session_idle_s=None) as src, \
            UdpSender(*src.address, geometry=GEOM, session_id=1,
                      max_events_per_packet=50) as a, \
            UdpSender(*src.address, geometry=GEOM, session_id=2,
                      max_events_per_packet=50) as b:
        da, db = a.encode(a_ev), b.encode(b_ev[:500])
        for x, y in zip(da, db + [[]] * (len(da) - len(db)), strict=True):
            a.send_datagrams([x])
            if y:
                b.send_datagrams([y])
        a.end(100_000)
        reader = _BatchReader(src, 10_000)
        first = reader.until(a_ev.size)
        b.send(b_ev[500:])
        b.end(7_100_000)
        second = reader.until(a_ev.size + 500)[len(first):]
        stats = src.source_stats()
    got_a = np.concatenate([x.events for x in first])
    np.testing.assert_array_equal(got_a, a_ev)
    assert not any(x.restart for x in first)
    np.testing.assert_array_equal(np.concatenate([x.events for x in second]), b_ev[500:])
    assert [x.restart for x in second if x.restart] == [True]  # one restart, at the takeover
    assert stats["other_session"] == len(db) == 10 and stats["session_takeovers"] == 1
    assert src.totals.dropped == 500  # the dropped sender's events are counted, not lost


def test_merge_policy_takes_every_session_on_one_clock() -> None:
    """sessions=merge: two senders sharing a clock (interleaved halves of one stream) give
    the whole stream, no restart, and their sequence numbers tracked apart (no loss)."""
    ev = _events(2000, seed=14, t_span_us=100_000)
    with _open(idle_timeout_s=None, sessions="merge") as src, \
            UdpSender(*src.address, geometry=GEOM, session_id=1,
                      max_events_per_packet=100) as a, \
            UdpSender(*src.address, geometry=GEOM, session_id=2,
                      max_events_per_packet=100) as b:
        for i in range(0, ev.size, 100):
            (a if i // 100 % 2 == 0 else b).send(ev[i:i + 100])
        a.end(100_000)
        b.end(100_000)
        batches = _batches_until(src, ev.size, batch_us=10_000)
        assert src.lost_packets == 0 and src.decoder.seq.sessions == 2
    np.testing.assert_array_equal(np.concatenate([x.events for x in batches]), ev)
    assert not any(x.restart for x in batches)


def test_waiting_for_a_sender_has_no_time_limit_by_default_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    """The geometry of an augury stream comes from its first datagram: by default the
    source waits for it as long as it takes (it used to give up after 5 s, and `augury run`
    exited 1), logging that it waits; a finite wait_sender_s still ends with a clear error."""
    import augury.adapters.udp as udp_mod

    with _open() as src:
        assert src.options.wait_sender_s is None
        caplog.set_level("INFO", logger="augury.udp")
        got: list[SensorGeometry] = []
        th = threading.Thread(target=lambda: got.append(src.geometry), daemon=True)
        old = udp_mod.WAIT_LOG_EVERY_S
        udp_mod.WAIT_LOG_EVERY_S = 0.05  # several wait periods go by
        try:
            th.start()
            th.join(0.5)
            assert th.is_alive() and not got  # still waiting, no error
            with UdpSender(*src.address, geometry="64x48") as tx:
                tx.heartbeat(0)
            th.join(WAIT_S)
        finally:
            udp_mod.WAIT_LOG_EVERY_S = old
        assert got == [SensorGeometry(64, 48)]
    waits = [r.getMessage() for r in caplog.records if "waiting for a sender" in r.getMessage()]
    assert len(waits) >= 3 and "no time limit" in waits[1]
    with _open(wait_sender_s=0.1) as src, pytest.raises(TimeoutError, match="no sender"):
        _ = src.geometry
    with _open(geometry_timeout_s="0.1") as src:  # the older option name still works
        assert src.options.wait_sender_s == 0.1


def test_garbage_is_counted_by_reason_in_source_stats() -> None:
    """Every malformed datagram is counted by reason, in the stream's counters and in
    ``source_stats()``; the valid stream around it is received whole."""
    ev = _events(400, seed=15)
    with _open(geometry="640x480", max_datagram=60_000, idle_timeout_s=None) as src, \
            _raw_socket() as raw, UdpSender(*src.address, geometry=GEOM,
                                            max_events_per_packet=100) as tx:
        good = [b"".join(bytes(p) for p in d) for d in tx.encode(ev)]
        hdr = list(HEADER.unpack_from(good[0]))
        garbage = {
            "short": [b"", b"AUGY"],
            "oversize": [bytes(65_507)],
            "bad_magic": [b"XXXX" + good[0][4:]],
            "bad_version": [good[0][:4] + b"\x02" + good[0][5:]],
            "bad_time": [HEADER.pack(*hdr[:6], -1, *hdr[7:]) + good[0][HEADER.size:]],
            "bad_event": [HEADER.pack(*hdr[:7], 8, 8, hdr[9]) + good[0][HEADER.size:]],
            "bad_length": [good[0][:-1]],
        }
        groups = list(garbage.values())
        for i, d in enumerate(good):  # each kind of garbage after one of the good datagrams
            raw.sendto(d, src.address)
            for group in groups[i::len(good)]:
                for x in group:
                    raw.sendto(x, src.address)
        raw.sendto(HEADER.pack(MAGIC, 1, 1, 32, hdr[4], len(good), ev["t"][-1], 640, 480, 0),
                   src.address)  # END
        batches = _batches_until(src, ev.size, batch_us=10_000)
        stats = src.source_stats()
    np.testing.assert_array_equal(np.concatenate([b.events for b in batches]), ev)
    expected = {k: len(v) for k, v in garbage.items()}
    assert stats["malformed_by_reason"] == expected
    assert stats["malformed"] == src.totals.malformed == sum(expected.values()) == 8


# --- the daemon: `augury run udp://…` fed by `augury send` ---------------------------------

_ENDPOINTS_RE = re.compile(r"publishing on (tcp://127\.0\.0\.1:\d+); control on (\S+?)[;\s]")


def _free_udp_port() -> int:
    with _raw_socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_augury_run_waits_for_a_sender_and_processes_every_window(shared_data: Path) -> None:
    """`augury run udp://…` (a daemon: no until_end, no geometry) waits for its first sender
    longer than the 5 s after which it used to exit 1, saying so, then processes every event
    of `augury send evt3_sample.raw`, its last window included, while it goes on listening."""
    from augury.control import ControlClient

    rec = shared_data / "prophesee" / "evt3_sample.raw"
    port = _free_udp_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "augury.cli", "run",
                             f"udp://127.0.0.1:{port}?format=augury", "--publish",
                             "tcp://127.0.0.1:*", "--control", "tcp://127.0.0.1:*"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        read_log_until(proc, re.compile("waiting for a sender"))
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=6.0)  # still waiting past the old 5 s limit
        sender = subprocess.run([sys.executable, "-m", "augury.cli", "send", str(rec),
                                 f"udp://127.0.0.1:{port}", "--pace", "asap"],
                                capture_output=True, text=True, timeout=120, env=env)
        assert sender.returncode == 0, sender.stderr
        _, ctl = read_log_until(proc, _ENDPOINTS_RE).groups()
        st: dict[str, object] = {}
        with ControlClient(ctl, timeout_ms=30_000) as client:
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline:
                st = client.call("status")
                if st.get("events_processed") == 219_596:
                    break
                with pytest.raises(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.2)  # still running (listening for the next sender)
        assert st.get("events_processed") == 219_596, st
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["events_processed"] == 219_596


def test_augury_run_with_a_finite_wait_for_a_sender_exits_with_a_clear_error() -> None:
    port = _free_udp_port()
    res = subprocess.run([sys.executable, "-m", "augury.cli", "run",
                          f"udp://127.0.0.1:{port}?format=augury", "--wait-sender-s", "0.3",
                          "--publish", "tcp://127.0.0.1:*", "--control", "none"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "no sender within 0.3 s" in res.stderr
    res = subprocess.run([sys.executable, "-m", "augury.cli", "run", "synthetic://bars",
                          "--wait-sender-s", "1", "--print-config"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "applies to udp://" in res.stderr


def _daemon_fed_garbage() -> tuple[object, dict[str, object], int]:
    """An in-process daemon on UDP fed 5 malformed datagrams around a valid stream:
    (its pipeline after the run, its status, the number of malformed datagrams)."""
    from augury.config import load_config
    from augury.daemon import build_daemon

    cfg = load_config(None, {"source.uri": "udp://127.0.0.1:0?geometry=64x48&until_end=1",
                             "source.pace": "asap", "source.batch_us": 1000,
                             "publish.endpoint": "tcp://127.0.0.1:*",
                             "control.endpoint": "none", "pipeline.overflow": "block"})
    daemon = build_daemon(cfg)
    try:
        host, port = daemon.source.address
        ev = make_events(np.arange(0, 20_000, 10), np.arange(2000) % 64,
                         np.arange(2000) % 48, np.arange(2000) % 2)
        with _raw_socket() as raw, UdpSender(host, port, geometry="64x48") as tx:
            for i, d in enumerate(tx.encode(ev)):
                tx.send_datagrams([d])
                if i < 5:
                    raw.sendto([b"", b"AUG", b"XXXX" * 10, bytes(65_507), MAGIC][i], (host, port))
            tx.end(20_000)
        daemon.pipeline.run()
        return daemon.pipeline, daemon.pipeline.status(), 5
    finally:
        daemon.close()


def test_malformed_datagrams_reach_the_pipeline_metrics() -> None:
    pipeline, _, n_bad = _daemon_fed_garbage()
    assert pipeline.metrics.source_malformed == n_bad  # type: ignore[attr-defined]
    assert pipeline.metrics.events_processed == 2000  # type: ignore[attr-defined]
    assert pipeline.source.source_stats()["malformed"] == n_bad  # type: ignore[attr-defined]


def test_malformed_datagrams_reach_status_and_stats() -> None:
    """Every malformed datagram is counted in the daemon's status (and so in ``stats``), in
    total and by reason."""
    _, status, n_bad = _daemon_fed_garbage()
    assert status.get("source_malformed") == n_bad
    by_source = status["source_stats"]
    assert by_source["malformed"] == sum(by_source["malformed_by_reason"].values()) == n_bad


def test_a_silent_session_idles_out_and_the_next_takes_over() -> None:
    """sessions=single: a sender that stops without END keeps the stream until it has been
    silent for session_idle_s; then the next sender takes over (one restart), and a late
    datagram of a sender that sent END is counted (after_end), not processed."""
    a_ev = _events(300, seed=16, t_span_us=30_000)
    b_ev = a_ev.copy()
    b_ev["t"] += 50_000_000
    with _open(idle_timeout_s=None, session_idle_s=0.3) as src, \
            UdpSender(*src.address, geometry=GEOM, session_id=10) as a, \
            UdpSender(*src.address, geometry=GEOM, session_id=11) as b:
        reader = _BatchReader(src, 10_000)
        a.send(a_ev)  # no END
        b.send(b_ev[:100])  # while a is current: dropped
        first = reader.until(a_ev.size)  # a's last window comes with its idle flush
        assert src.stats.idle_flushes == 1 and src.source_stats()["other_session"] >= 1
        b.send(b_ev[100:])
        b.end(int(b_ev["t"][-1]) + 1)
        late = b.encode(b_ev[:10])  # b's next sequence number, after its END
        b.send_datagrams(late)
        with UdpSender(*src.address, geometry=GEOM, session_id=12) as c:  # a third sender:
            c.send(b_ev[-1:])  # it takes over after b's END; its event marks that b's late
            c.end(int(b_ev["t"][-1]) + 1)  # datagram (sent before) was decoded
        got = reader.until(a_ev.size + 201)
        stats = src.source_stats()
    np.testing.assert_array_equal(np.concatenate([x.events for x in first]), a_ev)
    second = got[len(first):]
    np.testing.assert_array_equal(np.concatenate([x.events for x in second]),
                                  np.concatenate([b_ev[100:], b_ev[-1:]]))
    assert sum(x.restart for x in got) == 2 and got[len(first)].restart  # b, then c
    assert stats["after_end"] == 1 and stats["session_takeovers"] == 2
