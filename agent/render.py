"""rich tables for the CLI: agent status, task lists, and a result's timing breakdown."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.1f} GiB"


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def status_table(body: dict[str, Any]) -> Table:
    agent, backend, queue = body["agent"], body["backend"], body["queue"]
    capacity, telemetry = body["capacity"], body["telemetry"]
    table = Table(title=f"agent {agent['name']}", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("node", f"{agent['node']} (protocol v{agent['protocol']}, {agent['version']})")
    table.add_row("endpoint", agent["endpoint"])
    table.add_row("uptime", _seconds(agent["uptime_s"]))
    model = backend["model"] + (" [yellow](EMULATED)[/]" if backend["emulated"] else "")
    table.add_row("model", f"{model} via {backend['name']}")
    table.add_row("plan", str(backend["plan"].get("text", "-")))
    for device in telemetry["devices"]:
        mem = f"{_bytes(device['memory_used_bytes'])} / {_bytes(device['memory_total_bytes'])}"
        parts = [
            f"util {_num(device['utilization_percent'], '%', 0)}",
            f"mem {mem}",
            f"temp {_num(device['temperature_c'], ' C', 0)}",
            f"power {_num(device['power_w'], ' W', 0)}",
            f"clock {device['sm_clock_mhz'] or '-'} MHz",
        ]
        table.add_row(
            f"{device['kind']}{device['index']}", f"{device['name']}: " + ", ".join(parts)
        )
    if telemetry.get("note"):
        table.add_row("telemetry", f"{telemetry['source']} ({telemetry['note']})")
    running = "-"
    if queue["running"]:
        running = f"{queue['running']} step {queue['running_step']}/{queue['running_steps']}"
    table.add_row(
        "queue", f"{queue['queued']} queued (max {queue['max_queue']}), running: {running}"
    )
    table.add_row("backlog", f"{queue['backlog_steps']} steps, {_seconds(queue['backlog_s'])}")
    rates = capacity.get("steps_per_second")
    if rates:
        text = ", ".join(f"{size}: {rate:.2f} steps/s" for size, rate in rates.items())
        text += " (cached)" if capacity.get("cached") else ""
    elif capacity.get("error"):
        text = f"[red]not measured: {capacity['error']}[/]"
    else:
        text = "measuring..."
    table.add_row("capacity", text)
    counters = body.get("counters") or {}
    if counters:
        table.add_row("since start", ", ".join(f"{k} {v}" for k, v in sorted(counters.items())))
    return table


def _gpu(row: dict[str, Any]) -> str:
    devices = (row.get("telemetry") or {}).get("devices") or []
    if not devices:
        return "-"
    device = devices[0]
    util = _num(device.get("utilization_percent"), "%", 0)
    return f"{device.get('kind', '?')} {util}, {_bytes(device.get('memory_used_bytes'))}"


def cluster_table(cluster: dict[str, Any]) -> Table:
    """Every server as this agent sees it: state, backlog, load, capacity, model."""
    scheduler, decisions = cluster["scheduler"], cluster["decisions"]
    learning = ""
    if scheduler.get("learn"):
        learning = f", learning: {scheduler.get('trained_steps', 0)} step(s)"
    latency = ""
    if decisions.get("count"):
        latency = f", decision p99 {decisions['p99_us'] / 1000:.2f} ms"
    title = (
        f"cluster: {cluster['n_servers']} server(s), policy {scheduler['policy']}"
        f"{learning}{latency}"
    )
    table = Table(title=title, title_justify="left")
    for name in ("#", "name", "state", "backlog", "load", "capacity", "rtt", "model", "device"):
        table.add_column(name, no_wrap=True)
    colours = {
        "up": "green",
        "down": "red",
        "incompatible": "red",
        "refused": "red",
        "connecting": "yellow",
    }
    notes = [f"slot {r['slot']}: {r['error']}" for r in cluster["servers"] if r.get("error")]
    notes += [
        f"mDNS {u['endpoint']} not used: {u['reason']}"
        for u in cluster.get("discovered_unused", [])
    ]
    table.caption, table.caption_justify = "\n".join(notes) or None, "left"
    for row in cluster["servers"]:
        state = row["state"]
        label = f"[{colours.get(state, 'white')}]{state}[/]"
        if row.get("error"):
            label += " (!)"  # the whole error is in the caption
        rate = row.get("capacity_steps_per_s")
        model = str(row.get("model") or "-") + (" (EMULATED)" if row.get("emulated") else "")
        table.add_row(
            f"{row['slot']}{'*' if row['self'] else ''}",
            str(row.get("name") or row.get("endpoint")),
            label,
            f"{_num(row.get('backlog_steps'), ' st', 0)} / {_seconds(row.get('backlog_s'))}",
            _num(row.get("interval_load_steps"), " st", 0),
            _num(rate, " st/s"),
            _seconds(row.get("rtt_s")),
            model,
            _gpu(row),
        )
    return table


def tasks_table(rows: list[dict[str, Any]], now: float) -> Table:
    table = Table(title=f"{len(rows)} task(s), newest first", title_justify="left")
    for name in ("task", "state", "steps", "size", "age", "ran on", "prompt"):
        table.add_column(name, no_wrap=name != "prompt", min_width=12 if name == "prompt" else None)
    colours = {"done": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}
    for row in rows:
        state = row["state"]
        progress = f"{row['step']}/{row['steps']}" if state == "running" else str(row["steps"])
        table.add_row(
            row["task"],
            f"[{colours.get(state, 'white')}]{state}[/]",
            progress,
            row["size"],
            _seconds(now - row["submitted_at"]),
            _where(row),
            row["prompt"],
        )
    return table


def _where(row: dict[str, Any]) -> str:
    ran_on = row.get("ran_on") or {}
    placement = row.get("placement") or {}
    if ran_on:
        return str(ran_on.get("name") or ran_on.get("node", "?"))
    if row.get("state") == "forwarded":
        return f"-> {placement.get('name') or placement.get('endpoint')}"
    return "-"


def done_table(done: dict[str, Any], client_total_s: float | None) -> Table:
    timings = done.get("timings", {})
    table = Table(title=f"task {done.get('task')}", show_header=False, title_justify="left")
    table.add_column("stage", style="bold")
    table.add_column("time", justify="right")
    table.add_row("queue wait", _seconds(timings.get("queue_wait_s")))
    table.add_row("encode", _seconds(timings.get("encode_s")))
    table.add_row("denoise", _seconds(timings.get("denoise_s")))
    table.add_row("decode", _seconds(timings.get("decode_s")))
    table.add_row("backend total", _seconds(timings.get("backend_s")))
    if client_total_s is not None:
        table.add_row("end to end", _seconds(client_total_s))
    backend = done.get("backend", "?") + (" (EMULATED)" if done.get("emulated") else "")
    table.add_row("backend", backend)
    ran_on, placement = done.get("ran_on") or {}, done.get("placement") or {}
    if ran_on:
        table.add_row("ran on", f"{ran_on.get('name')} ({ran_on.get('endpoint')})")
    if placement.get("policy"):
        why = f"{placement['policy']}: {placement.get('reason', '')}"
        if placement.get("redispatches"):
            why += f" (re-dispatched {placement['redispatches']}x: {placement.get('reclaimed')})"
        table.add_row("placement", why)
    table.add_row(
        "size / steps / seed",
        f"{done.get('width')}x{done.get('height')} / {done.get('steps')} / {done.get('seed')}",
    )
    return table
