"""Measures, figure and Markdown summary of ``augury demo adaptation`` (no sockets here).

Input: what a subscriber recorded of the daemon, as ``Recording`` series on stream time (s):

* ``surprise_z``: the daemon's surprise z-score (free energy against its running baseline);
* ``surprisal``: the forecast's surprisal, −ln p(observed counts | Δ-ahead forecast) per
  event (nats/event; the Poisson log-likelihood of ``augury.model.scoring`` negated), one
  value per scored horizon window; ``persistence``: the same for the last window repeated.

Per scheduled shift at time s (phases of length P):

* **peak**: the largest surprise z, and the largest surprisal (running mean over
  ``SMOOTH`` windows), within ``PEAK_WINDOW_S`` after s. A shift is *detected* when z passes
  the alarm level ``ALARM_Z`` or the surprisal rises ``DETECT_SD`` standard deviations (of
  its running mean over the second before s) above its pre-shift level; both are surprise,
  and a direction reversal of bars, for one, changes what comes next (surprisal) more than
  what the current input looks like (z);
* **recovery time**: from s until the running-mean surprisal has come back ``RECOVER_FRAC``
  of the way from its post-shift peak to its level over the last second of the phase (ms of
  stream time; the shifted scene has its own level, so recovery is measured against it);
* **forgetting**: on the return to A, mean surprisal over its first second minus that over
  the last second of the first A phase (nats/event; > 0: A is predicted worse than before).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ALARM_Z = 3.0
DETECT_SD = 3.0
PEAK_WINDOW_S = 0.5
RECOVER_FRAC = 0.9
SMOOTH = 5
"""Windows in the running mean of the surprisal (5 × 10 ms = 50 ms at the default horizon)."""


@dataclass
class Recording:
    """Series recorded from the daemon (stream time in s) and map snapshots.

    snapshots: {label: {"observed": (rows, cols), "predicted": (rows, cols)}} count maps.
    """

    z_t: list[float] = field(default_factory=list)
    z: list[float] = field(default_factory=list)
    ll_t: list[float] = field(default_factory=list)
    surprisal: list[float] = field(default_factory=list)
    persistence: list[float] = field(default_factory=list)
    snapshots: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def running_mean(v: np.ndarray, n: int = SMOOTH) -> np.ndarray:
    """Trailing mean over the last n samples (fewer at the start)."""
    v = np.asarray(v, np.float64)
    if v.size == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - n, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def _mean_in(t: np.ndarray, v: np.ndarray, lo: float, hi: float) -> float | None:
    m = (t >= lo) & (t < hi)
    return float(np.mean(v[m])) if np.any(m) else None


def shift_measures(rec: Recording, shifts: Sequence[tuple[str, float]], phase_s: float
                   ) -> list[dict[str, Any]]:
    """One dict per shift (name, t_s): peaks, detected, recovery_ms, recovered."""
    zt, z = np.asarray(rec.z_t), np.asarray(rec.z)
    lt, s = np.asarray(rec.ll_t), running_mean(np.asarray(rec.surprisal))
    out = []
    for name, t0 in shifts:
        pre = (lt >= t0 - 1.0) & (lt < t0)
        post = (lt >= t0) & (lt < t0 + PEAK_WINDOW_S)
        zpost = (zt >= t0) & (zt < t0 + PEAK_WINDOW_S)
        zpre = (zt >= t0 - 1.0) & (zt < t0)
        row: dict[str, Any] = {"shift": name, "t_s": round(t0, 3)}
        row["z_pre"] = float(np.median(z[zpre])) if np.any(zpre) else None
        row["z_peak"] = float(np.max(z[zpost])) if np.any(zpost) else None
        row["z_peak_after_ms"] = (round(1e3 * (float(zt[zpost][np.argmax(z[zpost])]) - t0))
                                  if np.any(zpost) else None)
        if np.any(pre) and np.any(post):
            pre_mean, pre_sd = float(np.mean(s[pre])), float(np.std(s[pre]))
            i_peak = int(np.flatnonzero(post)[np.argmax(s[post])])
            peak = float(s[i_peak])
            row.update(surprisal_pre=pre_mean, surprisal_pre_sd=pre_sd, surprisal_peak=peak,
                       surprisal_peak_after_ms=round(1e3 * (float(lt[i_peak]) - t0)))
            rise = peak > pre_mean + DETECT_SD * max(pre_sd, 1e-3)
        else:
            rise, i_peak, peak = False, None, None
        row["z_alarm"] = bool(row["z_peak"] is not None and row["z_peak"] > ALARM_Z)
        row["surprisal_rise"] = bool(rise)
        row["detected"] = bool(row["z_alarm"] or rise)
        row["recovery_ms"], row["recovered"] = None, False
        level = _mean_in(lt, s, t0 + phase_s - 1.0, t0 + phase_s)
        if i_peak is not None and peak is not None and level is not None:
            target = peak - RECOVER_FRAC * (peak - level)
            after = np.flatnonzero((lt > lt[i_peak]) & (lt < t0 + phase_s) & (s <= target))
            if after.size:
                row["recovery_ms"] = round(1e3 * (float(lt[after[0]]) - t0))
                row["recovered"] = True
            row["surprisal_end_of_phase"] = level
        out.append(row)
    return out


def forgetting(rec: Recording, first_shift_s: float, return_s: float) -> float | None:
    """Mean surprisal over the first second back on A minus over the last second of the
    first A phase (nats/event; > 0: the return to A is predicted worse than A was)."""
    lt, s = np.asarray(rec.ll_t), np.asarray(rec.surprisal)
    back = _mean_in(lt, s, return_s, return_s + 1.0)
    before = _mean_in(lt, s, first_shift_s - 1.0, first_shift_s)
    return None if back is None or before is None else back - before


def figure(rec: Recording, shifts: Sequence[tuple[str, float]], path: Path) -> Path:
    """PNG strip: map thumbnails per phase, surprise z and forecast surprisal over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rec.snapshots)
    cols = max(len(labels), 1)
    fig = plt.figure(figsize=(2.0 * cols, 8.2))
    grid = fig.add_gridspec(4, cols, height_ratios=[1, 1, 1.5, 1.5], hspace=0.45)
    for j, label in enumerate(labels):
        for i, key in enumerate(("observed", "predicted")):
            ax = fig.add_subplot(grid[i, j])
            img = rec.snapshots[label].get(key)
            if img is not None:
                ax.imshow(img, cmap="magma", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{key}\n(events/cell)", fontsize=8)
    ax_z = fig.add_subplot(grid[2, :])
    ax_z.plot(rec.z_t, rec.z, lw=0.8, color="k")
    ax_z.axhline(ALARM_Z, color="tab:red", ls="--", lw=0.8, label=f"alarm (z = {ALARM_Z:g})")
    ax_z.set_ylabel("surprise z (sd)")
    ax_s = fig.add_subplot(grid[3, :], sharex=ax_z)
    ax_s.plot(rec.ll_t, running_mean(np.asarray(rec.surprisal)), lw=0.8, label="model")
    ax_s.plot(rec.ll_t, running_mean(np.asarray(rec.persistence)), lw=0.8,
              label="persistence", alpha=0.7)
    ax_s.set_ylabel("forecast surprisal\n(nats/event, 50 ms mean)")
    ax_s.set_xlabel("stream time (s)")
    for ax in (ax_z, ax_s):
        for name, t0 in shifts:
            ax.axvline(t0, color="tab:gray", lw=0.8)
            if ax is ax_z:
                ax.text(t0, ax.get_ylim()[1], f" {name}", fontsize=7, va="top", rotation=90)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("augury demo adaptation: shifts (grey lines), surprise, and recovery by "
                 "online learning", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def markdown(rows: list[dict[str, Any]], forget: float | None, meta: dict[str, Any],
             png_name: str) -> str:
    """The Markdown summary of one demo run."""

    def f(v: Any, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    lines = [
        "# augury demo adaptation",
        "",
        f"Scene: {meta['scene']}. Phases of {meta['phase_s']:g} s of stream time, replayed in "
        f"real time; forecast horizon {meta['horizon_ms']:g} ms, published every "
        f"{meta['horizon_ms']:g} ms.",
        "",
        f"![surprise and recovery]({png_name})",
        "",
        "| shift | at (s) | surprise z peak (before) | surprisal peak, nats/event (before) "
        "| detected | recovery (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shift']} | {r['t_s']:.1f} | {f(r['z_peak'], '.1f')} ({f(r['z_pre'], '.1f')})"
            f" | {f(r.get('surprisal_peak'), '.2f')} ({f(r.get('surprisal_pre'), '.2f')})"
            f" | {_detected(r)}"
            f" | {f(r['recovery_ms'], 'd') if r['recovered'] else 'not within the phase'} |")
    lines += [
        "",
        f"Forgetting on the return to A: {f(forget, '+.3f')} nats/event (mean forecast "
        "surprisal over the first second back on A minus over the last second of the first A "
        "phase; > 0: A is predicted worse than before the shifts).",
        "",
        "How to read it: *surprise z* is the daemon's free energy against its running "
        "baseline (> 3: unexpected input); *surprisal* is −ln p(observed | forecast) per event "
        "of the Δ-ahead forecast, scored on the window that then arrived (lower is better). "
        "A shift counts as detected when z passes 3 or the surprisal rises 3 sd above its "
        "level in the second before. *Recovery* is the time from the shift until the 50 ms "
        "mean surprisal has come back 90 % of the way from its peak to its level over the last "
        "second of the phase.",
    ]
    return "\n".join(lines) + "\n"


def _detected(r: dict[str, Any]) -> str:
    why = [w for w, on in (("z alarm", r["z_alarm"]), ("surprisal", r["surprisal_rise"])) if on]
    return f"yes ({', '.join(why)})" if r["detected"] else "no"


def write_report(out_dir: Path, rec: Recording, shifts: Sequence[tuple[str, float]],
                 phase_s: float, return_to_a: tuple[str, float] | None,
                 meta: dict[str, Any]) -> dict[str, Any]:
    """Write adaptation.png, summary.md and result.json into out_dir; the result object."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = shift_measures(rec, shifts, phase_s)
    back_row = shift_measures(rec, [return_to_a], phase_s)[0] if return_to_a else None
    forget = forgetting(rec, shifts[0][1], return_to_a[1]) if shifts and return_to_a else None
    png = figure(rec, [*shifts, *([return_to_a] if return_to_a else [])],
                 out_dir / "adaptation.png")
    md = out_dir / "summary.md"
    md.write_text(markdown(rows, forget, meta, png.name), encoding="utf-8")
    result = {
        "shifts": rows, "return_to_a": back_row,
        "all_detected": all(r["detected"] for r in rows) and bool(rows),
        "all_recovered": all(r["recovered"] for r in rows) and bool(rows),
        "recovery_ms": {r["shift"]: r["recovery_ms"] for r in rows},
        "forgetting_nats_per_event": forget,
        "png": str(png), "summary": str(md), **meta,
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result
