"""EVENT_DTYPE, converters from other libraries' dtypes, and validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from augury.events import (
    EVENT_DTYPE,
    EventFormatError,
    SensorGeometry,
    check_events,
    make_events,
    to_events,
    validate_events,
)

GEOM = SensorGeometry(64, 48)


def test_dtype_is_packed_with_integer_microseconds() -> None:
    assert EVENT_DTYPE.itemsize == 13
    assert EVENT_DTYPE["t"] == np.dtype("<i8")
    assert EVENT_DTYPE["x"] == np.dtype("<u2")
    assert EVENT_DTYPE["p"] == np.dtype("u1")


@pytest.mark.parametrize(
    "dtype",
    [
        [("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")],  # reference / tonic-like
        [("x", "<u2"), ("y", "<u2"), ("p", "<i2"), ("t", "<i8")],  # Metavision
        [("timestamp", "<i8"), ("x", "<i2"), ("y", "<i2"), ("polarity", "u1")],  # dv
        [("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")],  # faery
    ],
)
def test_to_events_accepts_other_libraries(dtype: list) -> None:
    src = np.zeros(3, dtype=dtype)
    names = src.dtype.names
    tname = names[[n in ("t", "timestamp") for n in names].index(True)]
    pname = [n for n in names if n in ("p", "on", "polarity")][0]
    src[tname] = [5, 6, 7]
    src["x"] = [1, 2, 3]
    src["y"] = [4, 5, 6]
    src[pname] = [0, 1, 1]
    ev = to_events(src)
    assert ev.dtype == EVENT_DTYPE
    assert ev["t"].tolist() == [5, 6, 7]
    assert ev["x"].tolist() == [1, 2, 3]
    assert ev["y"].tolist() == [4, 5, 6]
    assert ev["p"].tolist() == [0, 1, 1]


def test_to_events_maps_minus_one_polarity_and_float_seconds() -> None:
    src = np.zeros(2, dtype=[("t", "<f8"), ("x", "<i4"), ("y", "<i4"), ("p", "<i1")])
    src["t"] = [0.000001, 1.5]
    src["p"] = [-1, 1]
    ev = to_events(src)
    assert ev["t"].tolist() == [1, 1_500_000]
    assert ev["p"].tolist() == [0, 1]


def test_to_events_rejects_negative_coordinates_with_field_name() -> None:
    src = np.zeros(2, dtype=[("t", "<i8"), ("x", "<i4"), ("y", "<i4"), ("p", "u1")])
    src["x"] = [-1, 3]
    with pytest.raises(EventFormatError, match="field x"):
        to_events(src, source="f.npy")


def test_validate_drops_and_counts_each_reason() -> None:
    ev = make_events(
        np.array([10, 20, 5, 30, 40]),
        np.array([1, 64, 2, 3, 4]),  # x=64 is outside a 64-wide sensor
        np.array([1, 1, 2, 3, 4]),
        np.array([1, 0, 1, 2, 0]),  # p=2 is invalid
    )
    res = validate_events(ev, GEOM)
    assert res.out_of_bounds == 1
    assert res.bad_polarity == 1
    assert res.time_backwards == 1  # t=5 after t=10
    assert res.events["t"].tolist() == [10, 40]


def test_validate_reorders_inside_window_and_respects_floor() -> None:
    ev = make_events(np.array([100, 98, 101]), np.zeros(3), np.zeros(3), np.zeros(3))
    res = validate_events(ev, GEOM, reorder_window_us=5)
    assert res.events["t"].tolist() == [98, 100, 101]
    res = validate_events(ev, GEOM, t_floor_us=200, reorder_window_us=0)
    assert res.events.size == 0 and res.time_backwards == 3


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 100), st.integers(0, 100),
                          st.integers(0, 3)), max_size=200))
@settings(max_examples=100, deadline=None)
def test_validated_events_are_always_inside_and_sorted(rows: list) -> None:
    a = np.array(rows, dtype=np.int64).reshape(-1, 4)
    ev = make_events(a[:, 0], a[:, 1], a[:, 2], a[:, 3])
    res = validate_events(ev, GEOM, reorder_window_us=50)
    out = res.events
    assert out.size + res.dropped == ev.size
    check_events(out, GEOM)  # raises if anything invalid got through


def test_check_events_names_index_and_field() -> None:
    ev = make_events(np.array([1, 2]), np.array([0, 0]), np.array([0, 99]), np.array([0, 1]))
    with pytest.raises(EventFormatError, match=r"rec\.npy: event 1: y outside"):
        check_events(ev, GEOM, source="rec.npy")


def test_geometry_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="geometry"):
        SensorGeometry(0, 10)
