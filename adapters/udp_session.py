"""Sender sessions of the augury UDP framing: sequence tracking (loss, duplicates, reordering)
of each session, and the policy deciding which sessions a receiver accepts."""

from __future__ import annotations

from collections import OrderedDict, deque
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


class SessionSequences:
    """Sequence tracking of several sender sessions at once, with cumulative totals.

    ``observe(session, seq)`` classifies like ``SequenceTracker.observe``, each session with
    its own tracker (the ``max_sessions`` most recently heard are kept; an evicted session
    that comes back starts afresh). ``lost``, ``duplicates``, ``reordered``, ``stale`` are
    totals over every session heard (datagrams); ``sessions`` counts distinct sessions.
    """

    def __init__(self, window: int = SEQ_WINDOW, max_sessions: int = 64) -> None:
        SequenceTracker(window)  # validates the window
        self.window = window
        self.max_sessions = int(max_sessions)
        self._trackers: OrderedDict[int, SequenceTracker] = OrderedDict()
        self.sessions = 0
        self.lost = self.duplicates = self.reordered = self.stale = 0

    def observe(self, session: int, seq: int) -> str:
        tr = self._trackers.get(session)
        if tr is None:
            tr = self._trackers[session] = SequenceTracker(self.window)
            self.sessions += 1
            if len(self._trackers) > self.max_sessions:
                self._trackers.popitem(last=False)
        else:
            self._trackers.move_to_end(session)
        before = (tr.lost, tr.duplicates, tr.reordered, tr.stale)
        verdict = tr.observe(session, seq)
        self.lost += tr.lost - before[0]
        self.duplicates += tr.duplicates - before[1]
        self.reordered += tr.reordered - before[2]
        self.stale += tr.stale - before[3]
        return verdict


SESSION_POLICIES = ("single", "merge")
"""How a UDP receiver treats several augury sender sessions; see ``SessionGate``."""


@dataclass
class SessionGate:
    """Which sender sessions' datagrams are accepted (augury framing).

    ``policy="single"`` (the default): one session at a time. The first session heard
    becomes the current one; while it is open, datagrams of any other session are dropped
    and counted (``other_session``). It closes when it sends END (its later datagrams are
    dropped and counted, ``after_end``) or when ``idle()`` is called because nothing came
    from it for the receiver's idle time (it may then resume, or another session takes
    over). A session that takes over from a closed one restarts the stream's clock.

    ``policy="merge"``: the datagrams of every session are accepted into one stream on one
    clock (senders that share a time base, e.g. several processes of one sensor host);
    nothing is dropped for its session and nothing restarts; END only counts.

    ``admit(session, end)`` returns "keep", "restart" (keep; this session takes over, the
    clock restarts), "other" or "after_end" (drop), or "end_repeat" for an END datagram of a
    session already ended (senders repeat END because one datagram may be lost: dropped,
    counted in ``end_repeats`` only, not as a drop).
    """

    policy: str = "single"
    current: int | None = None
    is_open: bool = False
    ended: bool = False  # the current session closed by END (not by idling)
    other_session: int = 0
    after_end: int = 0
    takeovers: int = 0
    end_repeats: int = 0
    _ended: deque[int] = field(default_factory=lambda: deque(maxlen=8))  # last ended sessions

    def __post_init__(self) -> None:
        if self.policy not in SESSION_POLICIES:
            raise ValueError(f"sessions must be one of {SESSION_POLICIES}, got {self.policy!r}")

    def admit(self, session: int, end: bool = False) -> str:
        if end and session in self._ended and (
                self.policy == "merge" or session != self.current or self.ended):
            self.end_repeats += 1
            return "end_repeat"
        if self.policy == "merge":
            self.current, self.is_open = session, True
            return "keep"
        if self.current is None or (session != self.current and not self.is_open):
            restart = self.current is not None
            self.current, self.is_open, self.ended = session, True, False
            if restart:
                self.takeovers += 1
            return "restart" if restart else "keep"
        if session == self.current:
            if self.is_open:
                return "keep"
            if self.ended:
                self.after_end += 1
                return "after_end"
            self.is_open = True  # idled out, then came back before anyone took over
            return "keep"
        self.other_session += 1
        return "other"

    def end(self, session: int) -> None:
        """``session`` sent END (single: the current session closes; merge: nothing changes
        but its later copies of END are recognised)."""
        if session not in self._ended:
            self._ended.append(session)
        if self.policy == "single" and session == self.current:
            self.is_open, self.ended = False, True

    def idle(self) -> None:
        """Nothing came from the current session for the idle time: it closes (single)."""
        if self.policy == "single":
            self.is_open = False
