"""`augury info` on every shared recording, and `augury convert` round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from augury.adapters import open_source
from augury.cli import main

# (relative path, format, width, height, events) — counts from ../shared/data/README.md
SHARED = [
    ("prophesee/pedestrians_evt3_small.raw", "EVT 3.0", 1280, 720, 5_000),
    ("prophesee/evt3_sample.raw", "EVT 3.0", 1280, 720, 219_596),
    ("prophesee/evt2_sample.raw", "EVT 2.0", 640, 480, 539_481),
    ("prophesee/sparklers_evt2_v1.raw", "EVT 2.0", 640, 480, 521_252),
    ("prophesee/NCARS_obj_004397_td.dat", "DAT", 304, 240, 4_407),
    ("prophesee/sample_ncars.dat", "DAT", 304, 240, 2_009),
    ("inivation/davis240c_rotdisk.aedat", "AEDAT 2.0", 240, 180, 374_296),
    ("inivation/davis240c_translboxes.aedat", "AEDAT 2.0", 240, 180, 162_771),
    ("nmnist/sample_nmnist.bin", "N-MNIST", 34, 34, 4_325),
]


def _info(uri: str) -> dict:
    res = CliRunner().invoke(main, ["info", uri, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


@pytest.mark.parametrize(("rel", "fmt", "width", "height", "events"), SHARED)
def test_info_reports_format_geometry_and_count(shared_data: Path, rel: str, fmt: str,
                                                width: int, height: int, events: int) -> None:
    info = _info(str(shared_data / rel))
    assert (info["format"], info["width"], info["height"]) == (fmt, width, height)
    assert info["events"] == events
    assert info["dropped"] == 0
    assert info["peak_rate_hz"] >= info["mean_rate_hz"] > 0


def test_info_aedat4(shared_data: Path) -> None:
    pytest.importorskip("aedat", reason="AEDAT 4.0 needs the aedat4 extra (aedat package)")
    info = _info(str(shared_data / "inivation" / "dvxplorer_sample.aedat4"))
    assert (info["format"], info["width"], info["height"], info["events"]) == (
        "AEDAT 4.0", 320, 240, 111_954)


def test_info_text_output_and_span(shared_data: Path) -> None:
    res = CliRunner().invoke(main, ["info", str(shared_data / "nmnist" / "sample_nmnist.bin")])
    assert res.exit_code == 0
    assert "N-MNIST" in res.output and "34x34" in res.output and "4,325" in res.output
    span_ms = float(res.output.split("span")[1].split("ms")[0])
    assert 300 < span_ms < 320  # README: 311 ms


def test_info_synthetic_uri() -> None:
    info = _info("synthetic://bars?duration_us=200000&width=64&height=48")
    assert info["format"] == "synthetic" and (info["width"], info["height"]) == (64, 48)
    assert info["events"] > 100 and info["t_last_us"] < 200_000


def test_info_errors_name_the_problem(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["info", str(tmp_path / "missing.raw")])
    assert res.exit_code != 0 and "missing.raw" in res.output
    odd = tmp_path / "x.weird"
    odd.write_bytes(b"123")
    res = CliRunner().invoke(main, ["info", str(odd)])
    assert res.exit_code != 0 and ".weird" in res.output


@pytest.mark.parametrize(("out_name", "fmt"), [("o.raw", "evt3"), ("o.raw", "evt2"),
                                                ("o.npz", "evt3")])
def test_convert_round_trips_events(shared_data: Path, tmp_path: Path, out_name: str,
                                    fmt: str) -> None:
    src = shared_data / "inivation" / "davis240c_rotdisk.aedat"
    out = tmp_path / out_name
    res = CliRunner().invoke(main, ["convert", str(src), str(out), "--format", fmt,
                                    "--max-events", "50000"])
    assert res.exit_code == 0, res.output
    with open_source(src) as a:
        want = a.read_all()[:50_000]
    with open_source(out) as b:
        got = b.read_all()
        assert (b.geometry.width, b.geometry.height) == (240, 180)
    for f in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(got[f], want[f])


def test_convert_refuses_unknown_output(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["convert", "synthetic://bars?duration_us=1000",
                                    str(tmp_path / "o.mp4")])
    assert res.exit_code != 0 and ".mp4" in res.output


def test_record_with_duration_and_size_limits(tmp_path: Path) -> None:
    scene = "synthetic://bars?duration_us=2000000&width=64&height=48"
    out = tmp_path / "rec.raw"
    res = CliRunner().invoke(main, ["record", scene, str(out), "--duration-s", "0.25"])
    assert res.exit_code == 0, res.output
    with open_source(scene) as src:
        ev = src.read_all()
    want = ev[ev["t"] < int(ev["t"][0]) + 250_000]
    with open_source(out) as got_src:
        got = got_src.read_all()
        assert got_src.format == "EVT 3.0"
        assert (got_src.geometry.width, got_src.geometry.height) == (64, 48)
    for f in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(got[f], want[f])
    small = tmp_path / "small.raw"
    res = CliRunner().invoke(main, ["record", scene, str(small), "--max-mb", "0.05",
                                    "--format", "evt2"])
    assert res.exit_code == 0, res.output
    size = small.stat().st_size
    assert 50_000 <= size < 50_000 + 200_000  # stops at the first batch past the limit
    with open_source(small) as s2:
        part = s2.read_all()
    assert 0 < part.size < ev.size
    np.testing.assert_array_equal(part["t"], ev["t"][: part.size])


def test_info_directory_is_a_clear_error(tmp_path: Path) -> None:
    """Regression (issue 10, defect 7): `augury info DIR` printed an IsADirectoryError
    traceback; it must exit 1 with one line naming the directory."""
    res = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "Traceback" not in res.output
    assert "directory" in res.output and str(tmp_path) in res.output


def test_info_unreadable_inputs_are_clear_errors(tmp_path: Path) -> None:
    """An empty .bin, a .raw renamed .bin and an unknown option: exit 1, a one-line error."""
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    renamed = tmp_path / "renamed.bin"
    renamed.write_bytes(b"% evt 3.0\n% geometry 640x480\n% end\n" + bytes(5000))
    for uri, needle in ((str(empty), "empty.bin"), (str(renamed), "renamed.bin"),
                        (f"file://{renamed}?bogus=1", "bogus")):
        res = CliRunner().invoke(main, ["info", uri])
        assert res.exit_code == 1, (uri, res.output)
        assert isinstance(res.exception, SystemExit), (uri, res.exception)
        assert needle in res.output and "Error" in res.output


def test_demo_prints_a_legend_once_then_one_line_per_message() -> None:
    res = CliRunner().invoke(main, ["demo", "--duration-s", "2", "--scene",
                                    "synthetic://bars?duration_us=none&width=64&height=48"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("legend:") == 1
    for topic in ("beliefs", "prediction", "surprise", "stats"):
        assert f"\n  {topic:<10} " in res.stderr  # each topic's fields explained, with units
    *lines, last = res.stdout.strip().splitlines()
    assert json.loads(last)["messages"] == len(lines) >= 4
    assert {line.split()[0] for line in lines} >= {"beliefs", "prediction", "surprise", "stats"}
    stats = [line for line in lines if line.startswith("stats")]
    assert len(stats) >= 2
    assert "in -- proc --" in stats[0]  # no interval before the first stats message
    assert all(" kev/s" in s or " ev/s" in s for s in stats[1:])
