"""rich tables for the CLI: agent status, task lists, and a result's timing breakdown.

Everything shown here came from the network (an agent, or a peer through it) and is
hostile until shown otherwise. No remote string is ever parsed as rich markup: every cell,
title and caption is a ``rich.text.Text``. Control characters (ANSI escapes, bidi overrides)
are replaced before they reach the terminal, text and row counts are capped, and a field
that is missing or of the wrong type shows as "?" instead of raising.
"""

from __future__ import annotations

import math
import re
from typing import Any

from rich.table import Table
from rich.text import Text

WRONG = "?"  # a field that is missing or of the wrong type
NONE = "-"  # a field that is legitimately empty
MAX_TEXT_CHARS = 2000  # longest remote string shown (MAX_PROMPT_CHARS fits)
MAX_ROWS = 1000  # rows of one table (tasks, servers, devices): the protocol's own maximum
MAX_ITEMS = 32  # entries of one cell listing a map (counters, capacity by size)
MAX_DEPTH = 32  # nesting kept by ``jsonable`` (json.dumps recurses, msgpack allows 1024)

# C0/C1 control characters (ESC starts ANSI sequences) and the bidi overrides that make
# text read differently from what it is (CVE-2021-42574).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_WHITESPACE = re.compile("[\t\n\r]")
_STATE_STYLES = {
    "done": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "up": "green",
    "down": "red",
    "incompatible": "red",
    "refused": "red",
    "connecting": "yellow",
}


# --- remote values -----------------------------------------------------------------


def clean(value: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Remote text made safe for a terminal: control characters replaced, length capped."""
    if len(value) > limit:
        value = value[:limit] + "…"
    return _CONTROL.sub("\N{REPLACEMENT CHARACTER}", _WHITESPACE.sub(" ", value))


def text(value: Any, missing: str = WRONG) -> str:
    """A remote scalar as safe text: str or number; None is ``missing``; anything else "?"."""
    if value is None:
        return missing
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # msgpack integers are at most 64-bit
    return WRONG


def number(value: Any) -> float | None:
    """A remote number (int or float, not bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def mapping(value: Any) -> dict[Any, Any]:
    """A remote map, or an empty one when it is anything else."""
    return value if isinstance(value, dict) else {}


def rows_of(value: Any, limit: int = MAX_ROWS) -> list[dict[Any, Any]]:
    """The maps of a remote list (other entries dropped), at most ``limit``."""
    if not isinstance(value, list):
        return []
    return [row for row in value[:limit] if isinstance(row, dict)]


def jsonable(value: Any, depth: int = 0) -> Any:
    """A remote value that ``json.dumps`` always encodes: str keys, no bytes, bounded depth."""
    if depth >= MAX_DEPTH:
        return WRONG
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else repr(k): jsonable(v, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN is not JSON
    return value


# --- formatting --------------------------------------------------------------------


def _bytes(value: Any) -> str:
    n = number(value)
    if n is None:
        return NONE if value is None else WRONG
    return f"{n / 2**30:.1f} GiB"


def _num(value: Any, unit: str = "", digits: int = 1, scale: float = 1.0) -> str:
    n = number(value)
    if n is None:
        return NONE if value is None else WRONG
    return f"{n * scale:.{digits}f}{unit}"


def _seconds(value: Any) -> str:
    n = number(value)
    if n is None:
        return NONE if value is None else WRONG
    return f"{n * 1000:.1f} ms" if n < 1 else f"{n:.2f} s"


def _state(value: Any) -> Text:
    label = text(value)
    return Text(label, style=_STATE_STYLES.get(label, "white"))


def _listing(items: dict[Any, Any], show: Any) -> str:
    """``key value, ...`` of a remote map, sorted, at most MAX_ITEMS entries."""
    pairs = sorted(items.items(), key=lambda kv: repr(kv[0]))
    shown = ", ".join(show(k, v) for k, v in pairs[:MAX_ITEMS])
    return shown + (f", … ({len(pairs) - MAX_ITEMS} more)" if len(pairs) > MAX_ITEMS else "")


# --- tables ------------------------------------------------------------------------


def status_table(body: dict[str, Any]) -> Table:
    agent, backend, queue = (mapping(body.get(k)) for k in ("agent", "backend", "queue"))
    capacity, telemetry = mapping(body.get("capacity")), mapping(body.get("telemetry"))
    title = Text(f"agent {text(agent.get('name'))}")
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    node, protocol, version = (text(agent.get(k)) for k in ("node", "protocol", "version"))
    table.add_row("node", Text(f"{node} (protocol v{protocol}, {version})"))
    table.add_row("endpoint", Text(text(agent.get("endpoint"))))
    table.add_row("uptime", _seconds(agent.get("uptime_s")))
    emulated = (" (EMULATED)", "yellow") if backend.get("emulated") is True else ""
    via = f" via {text(backend.get('name'))}"
    table.add_row("model", Text.assemble(text(backend.get("model")), emulated, via))
    table.add_row("plan", Text(text(mapping(backend.get("plan")).get("text"), NONE)))
    for device in rows_of(telemetry.get("devices")):
        used, total = (
            _bytes(device.get("memory_used_bytes")),
            _bytes(device.get("memory_total_bytes")),
        )
        parts = [
            f"util {_num(device.get('utilization_percent'), '%', 0)}",
            f"mem {used} / {total}",
            f"temp {_num(device.get('temperature_c'), ' C', 0)}",
            f"power {_num(device.get('power_w'), ' W', 0)}",
            f"clock {_num(device.get('sm_clock_mhz'), ' MHz', 0)}",
        ]
        table.add_row(
            Text(f"{text(device.get('kind'))}{text(device.get('index'))}"),
            Text(f"{text(device.get('name'))}: " + ", ".join(parts)),
        )
    if telemetry.get("note"):
        source, note = text(telemetry.get("source")), text(telemetry.get("note"))
        table.add_row("telemetry", Text(f"{source} ({note})"))
    running = NONE
    if queue.get("running"):
        step, steps = text(queue.get("running_step")), text(queue.get("running_steps"))
        running = f"{text(queue.get('running'))} step {step}/{steps}"
    queued, most = text(queue.get("queued")), text(queue.get("max_queue"))
    table.add_row("queue", Text(f"{queued} queued (max {most}), running: {running}"))
    backlog = f"{text(queue.get('backlog_steps'))} steps, {_seconds(queue.get('backlog_s'))}"
    table.add_row("backlog", Text(backlog))
    table.add_row("capacity", _capacity(capacity))
    counters = mapping(body.get("counters"))
    if counters:
        listed = _listing(counters, lambda k, v: f"{text(k)} {text(v)}")
        table.add_row("since start", Text(listed))
    return table


def _capacity(capacity: dict[Any, Any]) -> Text:
    rates = mapping(capacity.get("steps_per_second"))
    if rates:
        shown = _listing(rates, lambda size, rate: f"{text(size)}: {_num(rate, ' steps/s', 2)}")
        return Text(shown + (" (cached)" if capacity.get("cached") is True else ""))
    if capacity.get("error"):
        return Text(f"not measured: {text(capacity.get('error'))}", style="red")
    return Text("measuring...")


def _gpu(row: dict[Any, Any]) -> str:
    devices = rows_of(mapping(row.get("telemetry")).get("devices"), 1)
    if not devices:
        return NONE
    device = devices[0]
    util = _num(device.get("utilization_percent"), "%", 0)
    return f"{text(device.get('kind'))} {util}, {_bytes(device.get('memory_used_bytes'))}"


def cluster_table(cluster: dict[str, Any], width: int | None = None) -> Table:
    """Every server as this agent sees it: state, backlog, load, capacity, model.

    Within ``width`` columns no header or cell is cut: the least useful columns (device, rtt,
    load) are dropped instead.
    """
    scheduler, decisions = mapping(cluster.get("scheduler")), mapping(cluster.get("decisions"))
    learning = latency = ""
    if scheduler.get("learn"):
        learning = f", learning: {text(scheduler.get('trained_steps', 0))} step(s)"
    if decisions.get("count"):
        latency = f", decision p99 {_num(decisions.get('p99_us'), ' ms', 2, scale=1e-3)}"
    servers = rows_of(cluster.get("servers"))
    title = (
        f"cluster: {text(cluster.get('n_servers'))} server(s), "
        f"policy {text(scheduler.get('policy'))}{learning}{latency}"
    )
    table = Table(title=Text(title), title_justify="left")
    notes = [
        f"slot {text(r.get('slot'))}: {text(r.get('error'))}" for r in servers if r.get("error")
    ]
    notes += [
        f"mDNS {text(u.get('endpoint'))} not used: {text(u.get('reason'))}"
        for u in rows_of(cluster.get("discovered_unused"))
    ]
    own = next((r for r in servers if r.get("self") is True), {})
    if gossip := mapping(own.get("gossip")):  # this agent's gossip cost, both directions
        notes.append(
            f"gossip: sent {_num(gossip.get('sent_msgs_per_s'), ' msg/s')}, "
            f"{_num(gossip.get('sent_bytes_per_s'), ' B/s', 0)}; "
            f"received {_num(gossip.get('recv_msgs_per_s'), ' msg/s')}, "
            f"{_num(gossip.get('recv_bytes_per_s'), ' B/s', 0)}"
        )
    # Remote text has no newline left (``clean``): one note per line.
    table.caption, table.caption_justify = (Text("\n".join(notes)) if notes else None), "left"
    cells: dict[str, list[Text]] = {name: [] for name in _CLUSTER_COLUMNS}
    for row in servers:
        label = _state(row.get("state"))
        if row.get("member") not in (None, "alive"):  # partial gossip: suspect or dead
            label.append(f" ({text(row.get('member'))})")
        if row.get("error"):
            label.append(" (!)")  # the whole error is in the caption
        model = text(row.get("model") or None, NONE)
        model += " (EMULATED)" if row.get("emulated") is True else ""
        backlog = f"{_num(row.get('backlog_steps'), ' st', 0)} / {_seconds(row.get('backlog_s'))}"
        values = (
            Text(f"{text(row.get('slot'))}{'*' if row.get('self') is True else ''}"),
            Text(text(row.get("name") or row.get("endpoint"))),
            label,
            Text(backlog),
            Text(_num(row.get("interval_load_steps"), " st", 0)),
            Text(_num(row.get("capacity_steps_per_s"), " st/s")),
            Text(_seconds(row.get("rtt_s"))),
            Text(model),
            Text(_gpu(row)),
        )
        for name, value in zip(_CLUSTER_COLUMNS, values, strict=True):
            cells[name].append(value)
    flexible = {"name": 12, "model": 12}
    kept = fit_columns(cells, _CLUSTER_KEEP_ORDER, width, flexible=flexible)
    for name in kept:
        if name in flexible:
            table.add_column(name, min_width=len(name), overflow="fold")
        else:
            table.add_column(name, no_wrap=True, min_width=_natural(name, cells[name]))
    for i in range(len(servers)):
        table.add_row(*(cells[name][i] for name in kept))
    return table


_CLUSTER_COLUMNS = ("#", "name", "state", "backlog", "load", "capacity", "rtt", "model", "device")
_CLUSTER_KEEP_ORDER = (
    "#",
    "name",
    "state",
    "backlog",
    "capacity",
    "model",
    "load",
    "rtt",
    "device",
)


def tasks_table(rows: list[dict[str, Any]], now: float, width: int | None = None) -> Table:
    """Tasks, newest first. Within ``width`` columns the id is never cut: the least useful
    columns (ran on, size, steps, age) are dropped instead, and the prompt wraps."""
    shown = rows_of(rows)
    cells: dict[str, list[Text]] = {name: [] for name in _TASK_COLUMNS}
    for row in shown:
        state = text(row.get("state"))
        progress = text(row.get("steps"))
        if state == "running":
            progress = f"{text(row.get('step'))}/{progress}"
        submitted = number(row.get("submitted_at"))
        cells["task"].append(Text(text(row.get("task"))))
        cells["state"].append(_state(row.get("state")))
        cells["steps"].append(Text(progress))
        cells["size"].append(Text(text(row.get("size"))))
        cells["age"].append(Text(WRONG if submitted is None else _seconds(now - submitted)))
        cells["ran on"].append(Text(_where(row)))
        cells["prompt"].append(Text(text(row.get("prompt"))))
    kept = fit_columns(cells, _TASK_KEEP_ORDER, width, flexible={"prompt": 12})
    table = Table(title=Text(f"{len(shown)} task(s), newest first"), title_justify="left")
    for name in kept:
        if name == "prompt":
            table.add_column(name, min_width=12, overflow="fold")
        else:
            table.add_column(name, no_wrap=True, min_width=_natural(name, cells[name]))
    for i in range(len(shown)):
        table.add_row(*(cells[name][i] for name in kept))
    return table


_TASK_COLUMNS = ("task", "state", "steps", "size", "age", "ran on", "prompt")
_TASK_KEEP_ORDER = ("task", "state", "prompt", "age", "steps", "size", "ran on")
_CELL_OVERHEAD = 3  # one padding space each side and one border per column (box style)


def _natural(header: str, cells: list[Text]) -> int:
    return max([len(header), *(c.cell_len for c in cells)])


def fit_columns(
    cells: dict[str, list[Text]],
    keep_order: tuple[str, ...],
    width: int | None,
    flexible: dict[str, int] | None = None,
) -> list[str]:
    """The columns (in table order) that fit ``width`` terminal cells, whole.

    Columns are kept in ``keep_order`` while their natural width (header or widest cell) fits;
    a ``flexible`` column (one that may wrap) counts only its minimum. ``None``: keep all.
    """
    if width is None:
        return list(cells)
    flexible = flexible or {}
    used, kept = 1, set()  # the table's closing border
    for name in keep_order:
        natural = _natural(name, cells[name])
        need = min(natural, max(flexible[name], len(name))) if name in flexible else natural
        if used + need + _CELL_OVERHEAD <= width or not kept:
            used += need + _CELL_OVERHEAD
            kept.add(name)
    return [name for name in cells if name in kept]


def _where(row: dict[Any, Any]) -> str:
    ran_on, placement = mapping(row.get("ran_on")), mapping(row.get("placement"))
    if ran_on:
        return text(ran_on.get("name") or ran_on.get("node"))
    if row.get("state") == "forwarded":
        return f"-> {text(placement.get('name') or placement.get('endpoint'))}"
    return NONE


def done_table(done: dict[str, Any], client_total_s: float | None) -> Table:
    timings = mapping(done.get("timings"))
    title = Text(f"task {text(done.get('task'))}")
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("stage", style="bold")
    table.add_column("time", justify="right")
    table.add_row("queue wait", _seconds(timings.get("queue_wait_s")))
    table.add_row("encode", _seconds(timings.get("encode_s")))
    table.add_row("denoise", _seconds(timings.get("denoise_s")))
    table.add_row("decode", _seconds(timings.get("decode_s")))
    table.add_row("backend total", _seconds(timings.get("backend_s")))
    if client_total_s is not None:
        table.add_row("end to end", _seconds(client_total_s))
    emulated = " (EMULATED)" if done.get("emulated") is True else ""
    table.add_row("backend", Text(text(done.get("backend")) + emulated))
    ran_on, placement = mapping(done.get("ran_on")), mapping(done.get("placement"))
    if ran_on:
        where = f"{text(ran_on.get('name'))} ({text(ran_on.get('endpoint'))})"
        table.add_row("ran on", Text(where))
    if placement.get("policy"):
        why = f"{text(placement.get('policy'))}: {text(placement.get('reason'), '')}"
        if placement.get("redispatches"):
            again, reclaimed = text(placement.get("redispatches")), text(placement.get("reclaimed"))
            why += f" (re-dispatched {again}x: {reclaimed})"
        table.add_row("placement", Text(why))
    size = f"{text(done.get('width'))}x{text(done.get('height'))}"
    table.add_row(
        "size / steps / seed",
        Text(f"{size} / {text(done.get('steps'))} / {text(done.get('seed'))}"),
    )
    return table
