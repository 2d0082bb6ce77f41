"""The arguments of the control commands, checked: ``reset`` scopes and ``set`` settings.

One implementation, used by ``Pipeline.control_handlers`` (and so by any ControlServer a
pipeline is wired to, the daemon's included). Every checker raises ``RequestError`` with a
text naming the field, the value received and what is allowed (see docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from augury.control import RequestError, check_args, describe

RESET_SCOPES: dict[str, str] = {
    "beliefs": "fast state only (traces, beliefs, sent values, active columns, clock); "
               "learned arrays, counters and surprise baselines are kept",
    "all": "the whole network back to its seeded initial state, learned weights included",
}
"""``reset`` scopes: what each one resets (``what`` defaults to ``beliefs``)."""

PUBLISH_EVERY_US_RANGE = (100, 3_600_000_000)
"""Allowed ``set publish_every_us`` values, µs (inclusive)."""


def setting_publish_every_us(value: object) -> int:
    """``publish_every_us`` (µs of stream time between read-outs): a JSON integer in
    ``PUBLISH_EVERY_US_RANGE``; RequestError otherwise (booleans and floats included)."""
    lo, hi = PUBLISH_EVERY_US_RANGE
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(f"publish_every_us must be a JSON integer (µs), got "
                           f"{describe(value)}")
    if not lo <= value <= hi:
        raise RequestError(f"publish_every_us must be in {lo}..{hi} µs, got {value}")
    return value


def setting_learning(value: object) -> bool:
    """``learning``: a JSON boolean (a string such as "false" or a number is refused)."""
    if not isinstance(value, bool):
        raise RequestError(f"learning must be a JSON boolean (true or false), got "
                           f"{describe(value)}")
    return value


SETTABLE: dict[str, Callable[[object], object]] = {
    "learning": setting_learning,
    "publish_every_us": setting_publish_every_us,
}
"""Run-time settings of ``set`` and the checker of each value (raises RequestError)."""


def parse_set(args: Mapping[str, Any]) -> dict[str, object]:
    """The checked settings of a ``set`` request, ``{name: value}``; RequestError otherwise.

    Two forms: the documented ``{"key": NAME, "value": V}`` and the short ``{NAME: V, ...}``
    (several at once). Every name and value is checked before anything is applied.
    """
    if "key" in args or "value" in args:
        check_args("set", args, ("key", "value"))
        if "key" not in args or "value" not in args:
            raise RequestError('set takes "key" and "value" together')
        key = args["key"]
        if not isinstance(key, str):
            raise RequestError(f'"key" must be a string, got {describe(key)}')
        pairs = {key: args["value"]}
    else:
        pairs = dict(args)
    if not pairs:
        raise RequestError(f'set needs {{"key": NAME, "value": V}}; settable: {sorted(SETTABLE)}')
    checked: dict[str, object] = {}
    for key, value in pairs.items():
        if key not in SETTABLE:
            raise RequestError(f"cannot set {key[:64]!r} at run time; settable: "
                               f"{', '.join(sorted(SETTABLE))}")
        checked[key] = SETTABLE[key](value)
    return checked


def parse_reset(args: Mapping[str, Any]) -> str:
    """The scope of a ``reset`` request (a key of ``RESET_SCOPES``, default ``beliefs``);
    RequestError for another argument or scope."""
    check_args("reset", args, ("what",))
    what = args.get("what", "beliefs")
    if not isinstance(what, str) or what not in RESET_SCOPES:
        raise RequestError(f'"what" must be one of {list(RESET_SCOPES)}, got '
                           f"{describe(what)}")
    return what
