"""The semantic check of a peer's gossip report, before the cluster stores it.

The protocol decoder checks types; this checks sense. A peer that reports NaN, a negative
backlog or a speed a thousand times its last one is broken or hostile, and its numbers
would steer every placement (and, through the learner's state, its policy). Pure: the
caller passes the peer's previous stored report and gets back the one to store.

Rules (``sanitize_report``):

- ``capacity_steps_per_s``: None means "not measured yet" and stays. Otherwise a finite
  number within ``CAPACITY_STEP`` (x10 either way) of the previous report's; on a first
  report (or after the peer restarted: a new ``started_at``) within ``CAPACITY_RANGE``, and
  within ``OWN_CAPACITY_SPREAD`` (x1000 either way) of this agent's own measured speed when
  it has one. Out of bounds: the previous value is kept, or None (the peer is not
  scheduled until it reports a sane speed).
- ``backlog_steps``, ``interval_load_steps``, ``backlog_s``: finite, in [0, ``MAX_WORK``].
  ``queued``: an integer in [0, ``MAX_WORK``]. Out of bounds: the previous value is kept;
  with none, the key is dropped and ``accepting`` set to False (not scheduled until sane).
"""

from __future__ import annotations

import math
from typing import Any

CAPACITY_RANGE = (1e-3, 1e6)  # steps/s, on a first report
CAPACITY_STEP = 10.0  # at most this factor between two reports of one peer
OWN_CAPACITY_SPREAD = 1000.0  # a first report within this factor of our own speed
MAX_WORK = 1e9  # steps, seconds or tasks
WORK_FIELDS = ("backlog_steps", "interval_load_steps", "backlog_s")
NULLABLE_FIELDS = ("backlog_s",)  # None on the wire: not known yet


def _number(value: Any) -> float | None:
    """``value`` as a finite float; None for NaN/inf, bools and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _in(value: float | None, lo: float, hi: float) -> bool:
    return value is not None and lo <= value <= hi


def _capacity_bounds(
    previous: dict[str, Any] | None, report: dict[str, Any], measured: float | None
) -> tuple[float, float, str]:
    """The range a reported speed must fall in, and what it is relative to."""
    prev = _number((previous or {}).get("capacity_steps_per_s"))
    restarted = (previous or {}).get("started_at") != report.get("started_at")
    if prev is not None and prev > 0 and not restarted:
        return prev / CAPACITY_STEP, prev * CAPACITY_STEP, f"of the previous {prev:g}"
    lo, hi = CAPACITY_RANGE
    own = _number(measured)
    if own is not None and own > 0:
        lo, hi = max(lo, own / OWN_CAPACITY_SPREAD), min(hi, own * OWN_CAPACITY_SPREAD)
        return lo, hi, f"of this agent's {own:g}"
    return lo, hi, "of any speed"


def sanitize_report(
    previous: dict[str, Any] | None, report: dict[str, Any], measured_capacity: float | None
) -> tuple[dict[str, Any], list[str]]:
    """A peer's gossip report with insane values replaced, and a reason for each.

    Args:
        previous: this peer's last stored (sanitised) report; None for its first.
        report: the report as decoded from the wire; not modified.
        measured_capacity: this agent's own speed (steps/s), None while unmeasured.

    Returns:
        The report to store, and one line per replaced value (empty when sane).
    """
    out = dict(report)
    reasons: list[str] = []
    before = previous or {}

    if "capacity_steps_per_s" in report and report["capacity_steps_per_s"] is not None:
        raw = report["capacity_steps_per_s"]
        lo, hi, relative = _capacity_bounds(previous, report, measured_capacity)
        if not _in(_number(raw), lo, hi):
            kept = _number(before.get("capacity_steps_per_s"))
            kept = kept if _in(kept, *CAPACITY_RANGE) else None
            out["capacity_steps_per_s"] = kept
            reasons.append(
                f"capacity_steps_per_s {raw!r} outside [{lo:g}, {hi:g}] ({relative}): "
                f"{'kept ' + format(kept, 'g') if kept is not None else 'unknown'}"
            )

    for name in (*WORK_FIELDS, "queued"):
        if name not in report:
            continue
        raw = report[name]
        if raw is None and name in NULLABLE_FIELDS:
            continue  # unknown (a peer that has not measured its speed yet), not insane
        value = _number(raw)
        sane = _in(value, 0.0, MAX_WORK) and (name != "queued" or isinstance(raw, int))
        if sane:
            continue
        kept = before.get(name)
        if _in(_number(kept), 0.0, MAX_WORK):
            out[name] = kept
            reasons.append(f"{name} {raw!r} is not a number in [0, {MAX_WORK:g}]: kept {kept}")
        else:
            del out[name]
            out["accepting"] = False
            reasons.append(
                f"{name} {raw!r} is not a number in [0, {MAX_WORK:g}]: "
                "not scheduled until it reports a sane one"
            )
    return out, reasons
