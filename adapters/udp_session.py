"""Sender sessions of the augury UDP framing: datagram sequence tracking (loss, duplicates,
reordering) of one session."""

from __future__ import annotations

from dataclasses import dataclass, field

from augury.adapters.udp_wire import SEQ_WINDOW


@dataclass
class SequenceTracker:
    """Classify datagram sequence numbers (u32, serial-number arithmetic) of one session.

    ``observe(session, seq)`` returns "new", "reordered" (arrives after a higher number and
    was not seen before; keep), "duplicate" (seen before; drop) or "stale" (older than
    ``window`` numbers; drop). ``lost`` is the number of sequence numbers skipped between the
    session's first datagram and its highest, net of late arrivals; ``sessions`` counts
    sender sessions (a new session id resets the tracking).
    """

    window: int = SEQ_WINDOW
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    stale: int = 0
    sessions: int = 0
    _session: int | None = None
    _highest: int = 0
    _state: bytearray = field(default_factory=bytearray)  # per seq % window: 1 seen, 2 missing

    def __post_init__(self) -> None:
        if self.window <= 1 or self.window & (self.window - 1) or self.window > 1 << 16:
            raise ValueError(f"window must be a power of two in 2..65536 (it divides 2**32), "
                             f"got {self.window}")

    def observe(self, session: int, seq: int) -> str:
        if self._session != session:
            self._session = session
            self.sessions += 1
            self._highest = seq
            self._state = bytearray(self.window)
            self._state[seq % self.window] = 1
            return "new"
        delta = ((seq - self._highest + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
        if delta > 0:
            self.lost += delta - 1
            for k in range(1, min(delta, self.window)):
                self._state[(seq - k) % self.window] = 2
            self._state[seq % self.window] = 1
            self._highest = seq
            return "new"
        if -delta >= self.window:
            self.stale += 1
            return "stale"
        slot = seq % self.window
        if self._state[slot] == 1:
            self.duplicates += 1
            return "duplicate"
        if self._state[slot] == 2:  # counted lost when skipped: it was only late
            self.lost -= 1
        self._state[slot] = 1  # (0: older than the first datagram of the session)
        self.reordered += 1
        return "reordered"
