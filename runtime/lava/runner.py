"""Guarded runner: runs a Lava network in fixed chunks without any of Lava 0.10's hangs.

Confirmed hazards of lava-nc 0.10.0 (see ``../shared/LAVA.md``) and what this does about each:

* a ProcessModel that raises makes ``run()``/``wait()`` hang forever, silently: every chunk
  is started non-blocking (``RunSteps(blocking=False)``), and the runner waits on the
  children's exception pipes and exit sentinels together with the runtime's reply queues,
  so a failure is reported (with the model's traceback) within ``poll_s`` seconds;
* ``pause()`` followed by a blocking run hangs: ``pause()`` is never called;
* ``Var.get()`` during a run returns None and ``Var.set()`` before the first run raises:
  values are read and written only between chunks; before the first chunk ``get`` returns
  the initial value and ``set`` is refused with a clear error;
* a failed or abandoned runtime leaves children (which keep stdout pipes open) and shared
  memory behind, and an exception in the host script hangs the interpreter at exit: the
  runner records every child process it started (by PID) and every shared-memory segment,
  and ``close()`` (also called by ``__exit__`` and by an ``atexit`` hook registered per
  runner) stops the runtime or, if that cannot be done, kills the children by PID and
  unlinks the segments.

Known drawback: if the host process is killed with SIGKILL nothing of the above can run;
the children then see their parent die only through ``PR_SET_PDEATHSIG`` (Linux, set by
``orphan_guard``), and the shared-memory segments of that run stay in ``/dev/shm``.
"""

from __future__ import annotations

import atexit
import ctypes
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import wait as mp_wait
from typing import Any

from augury.lava import LavaError, require_lava


class LavaProcessError(LavaError):
    """A Lava ProcessModel raised (or a Lava child process died) during a guarded run."""


def orphan_guard() -> None:
    """Make the forked children of this process receive SIGKILL when its creating thread
    dies (Linux ``prctl(PR_SET_PDEATHSIG)``); registered once per interpreter with
    ``os.register_at_fork`` by ``GuardedRunner`` (a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


_FORK_HOOK = {"installed": False}  # a one-way latch: register_at_fork has no undo


class GuardedRunner:
    """Run ``process``'s Lava network in chunks of ``RunSteps(blocking=False)`` + ``wait()``.

    Args:
        process: any Process of the (connected) network; Lava compiles all it reaches.
        run_cfg: a Lava RunConfig (e.g. ``Loihi2SimCfg(select_tag="floating_pt")``).
        poll_s: how often (s) the children are checked while a chunk runs.
        stop_timeout_s: how long a clean ``runtime.stop()`` may take before the runner
            kills the children instead.
    """

    def __init__(self, process: Any, run_cfg: Any, *, poll_s: float = 0.05,
                 stop_timeout_s: float = 5.0) -> None:
        require_lava()
        self.process = process
        self.run_cfg = run_cfg
        self.poll_s = float(poll_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self.steps_run = 0
        self._runtime: Any = None
        self._before = {p.pid for p in mp.active_children()}
        self._pids: list[int] = []
        self._names: dict[int, str] = {}  # actor PID → "ProcessModel (process name)"
        self._shm: list[str] = []
        self._closed = False
        self._failed: str | None = None
        if not _FORK_HOOK["installed"] and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=orphan_guard)
            _FORK_HOOK["installed"] = True
        atexit.register(self.close)

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self) -> GuardedRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def child_pids(self) -> list[int]:
        """PIDs of the processes Lava started for this runner (its actors and managers)."""
        return list(self._pids)

    @property
    def shm_names(self) -> list[str]:
        """Names of the shared-memory segments of this runner's channels."""
        return list(self._shm)

    # -- running -----------------------------------------------------------------------------
    def run(self, n_steps: int, feed: Callable[[], None] | None = None) -> None:
        """Run ``n_steps`` Lava steps and return when they are done.

        ``feed`` is called once the (non-blocking) run has started, before waiting: it
        sends the chunk's input to Injectors and must not block (size the Injectors'
        buffers for a whole chunk). Raises LavaProcessError naming the failing ProcessModel
        (with its traceback) if a model raises or a child dies; the runner is then closed
        (children killed by PID, shared memory unlinked).
        """
        from lava.magma.core.run_conditions import RunSteps

        if self._closed:
            raise LavaError("GuardedRunner.run: the runner is closed"
                            + (f" after a failure:\n{self._failed}" if self._failed else ""))
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
        cond = RunSteps(num_steps=n_steps, blocking=False)
        if self._runtime is None:
            self.process.run(condition=cond, run_cfg=self.run_cfg)
            self._runtime = self.process.runtime
            self._record_children()
        else:
            self.process.run(condition=cond)
        if feed is not None:
            feed()
        self._wait()
        self.steps_run += n_steps

    def _record_children(self) -> None:
        self._pids = [p.pid for p in mp.active_children() if p.pid not in self._before]
        smm = getattr(self._infra(), "smm", None)
        handles = getattr(smm, "_shared_memory_handles", []) or []
        self._shm = [h.name.lstrip("/") for h in handles]
        self._names = {}
        try:  # Lava builds one actor per Python process builder, in this order, then services
            from lava.magma.compiler.builders.py_builder import PyProcessBuilder

            items = [(proc, b) for proc, b in self._runtime._executable.proc_builders.items()
                     if isinstance(b, PyProcessBuilder)]
            for actor, (proc, b) in zip(self._actors()[:len(items)], items, strict=True):
                self._names[actor.pid] = f"{b.proc_model.__name__} ({proc.name})"
        except (AttributeError, ImportError, ValueError):  # best effort: the traceback stays
            pass

    def _infra(self) -> Any:
        return getattr(self._runtime, "_messaging_infrastructure", None)

    def _actors(self) -> list[Any]:
        infra = self._infra()
        return list(getattr(infra, "actors", []) or [])

    def _wait(self) -> None:
        """Wait for the chunk's replies while watching every child (no blocking ``wait()``
        until all replies are there)."""
        rt = self._runtime
        ports = list(rt.service_to_runtime)
        actors = self._actors()
        watch = [a._pconn for a in actors] + [a.sentinel for a in actors]
        # the replies cannot be waited on (shared-memory channels): poll them, first every
        # 0.25 ms and then less often up to poll_s, so that a short chunk is not stretched
        # to poll_s while a failure is still seen within poll_s
        pause = min(self.poll_s, 0.00025)
        while True:
            bad = self._failures(actors)
            if bad:
                self._failed = bad
                self._kill()
                raise LavaProcessError(bad)
            if all(p.probe() for p in ports):
                break
            mp_wait(watch, timeout=pause)
            pause = min(self.poll_s, pause * 2)
        rt.wait()

    def _failures(self, actors: list[Any]) -> str:
        """Tracebacks of children that raised or died, '' if none did."""
        out = []
        for a in actors:
            exc = a.exception if not a._is_done else a._exception
            model = self._names.get(a.pid)
            what = (f"Lava process model {model}" if model
                    else f"Lava child {a.pid} (a runtime service)")
            if exc:
                err, tb = exc
                out.append(f"{what} raised {type(err).__name__}: {err}\n{tb}")
            elif a.exitcode not in (None, 0):
                out.append(f"{what} died with exit code {a.exitcode}")
        return "\n".join(out)

    # -- variables ---------------------------------------------------------------------------
    def get(self, var: Any) -> Any:
        """The value of a Lava Var between chunks (its initial value before the first)."""
        if self._runtime is None:
            return var.init
        if self._closed:
            raise LavaError(f"GuardedRunner.get({var.name}): the runner is closed")
        return var.get()

    def set(self, var: Any, value: Any) -> None:
        """Write a Lava Var between chunks (Lava refuses it before the first run)."""
        if self._runtime is None:
            raise LavaError(f"GuardedRunner.set({var.name}): Lava 0.10 cannot set a Var "
                            "before the first run; pass it as the Process's initial value")
        if self._closed:
            raise LavaError(f"GuardedRunner.set({var.name}): the runner is closed")
        var.set(value)

    # -- ending ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the runtime (cleanly if it answers within ``stop_timeout_s``, else by killing
        its children by PID) and remove its shared memory; idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        rt = self._runtime
        if rt is None:
            return
        if self._failed is None and not self._failures(self._actors()):
            self._stop_cleanly(rt)
        self._kill()

    def _stop_cleanly(self, rt: Any) -> None:
        import threading

        done = threading.Event()

        def stop() -> None:
            try:
                rt.stop()
            except Exception:  # noqa: BLE001 - the kill below cleans up whatever is left
                pass
            finally:
                done.set()

        threading.Thread(target=stop, name="augury-lava-stop", daemon=True).start()
        done.wait(self.stop_timeout_s)

    def _kill(self) -> None:
        """Kill every recorded child by PID, reap it, unlink the recorded segments."""
        rt = self._runtime
        for pid in self._pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5.0
        for p in mp.active_children():  # reaps the exited ones; join the recorded ones
            if p.pid in self._pids:
                # Lava's SystemProcess.join() takes no timeout: call the base class's
                mp.Process.join(p, timeout=max(0.0, deadline - time.monotonic()))
        for name in self._shm:
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except FileNotFoundError:
                pass
        if rt is not None:  # the runtime's __del__ would otherwise call stop() and hang
            rt._is_running = False
            rt._is_started = False
            infra = self._infra()
            smm = getattr(infra, "_smm", None)
            if smm is not None:
                smm._manager = None
                smm._shared_memory_handles.clear()
            wd = getattr(rt, "_watchdog_manager", None)
            if wd is not None and hasattr(wd, "_mp_manager"):
                wd._mp_manager = None
            self._runtime = rt
        self._closed = True
