"""Resuming learned state written by another version or with other hyper-parameters.

A checkpoint stores the model spec it was written with (JSON) and every state array. When
the daemon restarts, the configured spec may differ from it, and a newer version may have
added or removed state arrays. What learned state can be kept is decided here, as pure
functions over dicts:

* keys that fix the shapes and meaning of the arrays (``GEOMETRY_KEYS``: sensor size,
  pooling, column size, number of beliefs and layers, shared or per-column weights) must be
  equal, or nothing can be loaded (ValueError naming the keys);
* other hyper-parameters (time constants, thresholds, relaxation steps, learning rates)
  may differ: the learned weights, precisions and beliefs are still parameters of the same
  network, and the configured values apply from now on (reported, not fatal);
* arrays the current version has and the checkpoint lacks start from their initial value
  (e.g. a newly added forecast unit starts as persistence); arrays the checkpoint has and
  the current version does not know are dropped; arrays whose shape changed with a
  non-geometry setting (the number of rate experts) restart. All are reported by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from augury.model.spec import ModelSpec
from augury.model.state import State, init_state

GEOMETRY_KEYS = ("width", "height", "pool", "column", "k1", "k2", "layers",
                 "per_column_weights")
"""ModelSpec fields that fix the shapes (and meaning) of the state arrays."""


@dataclass
class Reconciled:
    """A state dict ready for ``Network.load_state_dict`` and what was changed to get it.

    differs: {key: (checkpoint value, configured value)} for hyper-parameters that differ
    (the configured value applies); added: arrays initialised because the checkpoint lacks
    them; dropped: checkpoint arrays this version does not know.
    """

    arrays: dict[str, np.ndarray]
    differs: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line naming every difference, or "" when there is none."""
        parts = []
        if self.differs:
            parts.append("hyper-parameters now " + ", ".join(
                f"{k}={new!r} (checkpoint {old!r})" for k, (old, new) in
                sorted(self.differs.items())))
        if self.added:
            parts.append("new state initialised: " + ", ".join(self.added))
        if self.dropped:
            parts.append("unknown state dropped: " + ", ".join(self.dropped))
        if self.reset:
            parts.append("state of another shape restarted: " + ", ".join(self.reset))
        return "; ".join(parts)


def spec_differences(saved: dict[str, Any], spec: ModelSpec) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, configured value)} for every field of the configured spec whose
    saved value differs; a field the saved spec lacks (an older version) is listed with the
    saved value None."""
    now = spec.to_dict()
    return {k: (saved.get(k), v) for k, v in now.items() if _plain(saved.get(k)) != _plain(v)}


def _plain(value: Any) -> Any:
    """A value as JSON gives it back: tuples (``mix_taus_us``) compare as lists."""
    return list(value) if isinstance(value, tuple) else value


def reconcile(saved_spec_json: str, arrays: dict[str, np.ndarray],
              spec: ModelSpec) -> Reconciled:
    """Fit a checkpoint's arrays (written with ``saved_spec_json``) to ``spec``.

    Raises ValueError naming the geometry keys that differ (nothing can be kept then), or
    when the saved spec is not a JSON object.
    """
    try:
        saved = json.loads(saved_spec_json)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint spec is not valid JSON: {exc}") from None
    if not isinstance(saved, dict):
        raise ValueError("checkpoint spec is not a JSON object")
    differs = spec_differences(saved, spec)
    geometry = [k for k in GEOMETRY_KEYS if k in differs]
    if geometry:
        raise ValueError("the checkpoint was written for another network geometry: " + ", ".join(
            f"{k}={differs[k][0]!r} there, {differs[k][1]!r} configured" for k in geometry))
    fresh = init_state(spec)._asdict()
    out: dict[str, np.ndarray] = {}
    added = []
    reset = []
    for name in State._fields:
        if name in arrays and (np.shape(arrays[name]) != fresh[name].shape
                               or np.asarray(arrays[name]).dtype != fresh[name].dtype):
            # the geometry matches, so only a non-geometry setting changed this array's
            # shape (the rate experts' number, mix_taus_us / mix_shared) or a version its
            # dtype: it starts afresh rather than refusing the learned weights with it
            out[name] = fresh[name]
            reset.append(name)
        elif name in arrays:
            out[name] = arrays[name]
        else:
            out[name] = fresh[name]
            added.append(name)
    dropped = sorted(k for k in arrays if k not in fresh and not k.startswith("__"))
    for k in arrays:
        if k.startswith("__"):
            out[k] = arrays[k]
    return Reconciled(out, differs, added, dropped, reset)
