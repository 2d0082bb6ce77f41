"""Lava stays optional: importing augury never imports it, and asking for it without it
fails with a message naming the extra (runs in the main test run, with or without Lava)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from augury.cli import main


def test_importing_augury_does_not_import_lava() -> None:
    code = ("import sys, augury, augury.cli, augury.lava, augury.lava.convert\n"
            "print(sorted(m for m in sys.modules if m == 'lava' or m.startswith('lava.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_run_backend_lava_without_lava_names_the_extra_and_the_option() -> None:
    """No lava-nc for this interpreter (hidden in a fresh one, whether or not it is
    installed) and no --lava-python: a clear error before anything starts."""
    code = ("import importlib.util as u\n"
            "u.find_spec = lambda name, *a: None\n"
            "from augury.cli import main\n"
            "main(['run', '--backend', 'lava', '--max-batches', '1', '--control', 'none',"
            " '--publish', 'tcp://127.0.0.1:0'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "pip install 'augury[lava]'" in r.stderr and "Python 3.10" in r.stderr
    assert "--lava-python" in r.stderr


def test_run_backend_lava_with_a_bad_interpreter_is_a_clear_error() -> None:
    r = CliRunner().invoke(main, ["run", "--backend", "lava", "--max-batches", "1",
                                  "--lava-python", "/nonexistent/python3.10",
                                  "--control", "none", "--publish", "tcp://127.0.0.1:0"])
    assert r.exit_code == 1
    assert "cannot start the Lava sidecar with '/nonexistent/python3.10'" in r.output


def test_require_lava_without_lava_names_the_extra() -> None:
    """Lava hidden from the import system (a fresh interpreter, whether or not it is installed):
    LavaUnavailable, an ImportError, names the extra."""
    code = ("import importlib.util as u\n"
            "u.find_spec = lambda name, *a: None\n"
            "from augury.lava import LavaUnavailable, require_lava\n"
            "try:\n    require_lava()\n"
            "except LavaUnavailable as e:\n    print(isinstance(e, ImportError), e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("True ") and "pip install 'augury[lava]'" in r.stdout


def test_lava_serve_without_lava_names_the_extra() -> None:
    """``augury lava-serve`` with Lava hidden from the import system (fresh interpreter)."""
    code = ("import importlib.util as u\n"
            "u.find_spec = lambda name, *a: None\n"
            "from augury.cli import main\n"
            "main(['lava-serve'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "pip install 'augury[lava]'" in r.stderr


def test_build_daemon_starts_the_sidecar_before_any_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--backend lava``: the sidecar is started (subprocess) before the daemon opens its
    source or starts any thread; a failure to start leaves nothing behind."""
    import threading

    from augury import daemon
    from augury.config import load_config
    from augury.lava import sidecar_client

    seen: list[int] = []

    def fake_start(python: str, **kw: object) -> None:
        seen.append(threading.active_count())
        raise sidecar_client.SidecarError("stop here")

    def no_source(*a: object, **kw: object) -> None:
        raise AssertionError("the source was opened before the sidecar started")

    monkeypatch.setattr(sidecar_client, "start_sidecar", fake_start)
    monkeypatch.setattr(daemon, "open_source", no_source)
    before = threading.active_count()
    try:
        daemon.build_daemon(load_config(None, {}), backend="lava", lava_python="python3.10")
    except sidecar_client.SidecarError as exc:
        assert "stop here" in str(exc)
    else:
        raise AssertionError("build_daemon did not fail")
    assert seen == [before]
    assert threading.active_count() == before
