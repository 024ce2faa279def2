"""`dedgeai agent run|config` and the client commands `submit`, `status`, `tasks`, `result`,
`cancel`: thin wrappers over ``dedgeai.agent.client.library`` and ``dedgeai.agent.node.service``.

Exit codes (``ExitCode``): 0 done · 1 internal error, or a malformed reply from the agent ·
2 bad input, unknown task, bad configuration or forbidden · 3 agent busy, shutting down or out of storage ·
4 task failed or cancelled · 5 agent unreachable (after the timeout and retries) ·
130 interrupted (Ctrl-C) while waiting for a submitted task, whose id and cancel command are shown.

Nothing an agent sends is trusted: remote text is shown through ``render`` (never as rich
markup, control characters replaced), the fields used are type-checked, and file names are
built only from the task id the user typed or this CLI chose, never from a reply.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TimeElapsedColumn
from rich.text import Text

from dedgeai.agent.client import render
from dedgeai.agent.client.library import DEFAULT_TIMEOUT_S, ENDPOINT_ENV, AgentClient
from dedgeai.agent.errors import (
    DedgeaiError,
    ErrorCode,
    ProtocolError,
    RemoteError,
    remote_error,
)
from dedgeai.agent.exit_codes import ExitCode, exit_code_of
from dedgeai.agent.node.config import load_config, parse_override, render_toml
from dedgeai.agent.node.protocol import MAX_TASKS_LIMIT, Reply, TaskId, new_task_id
from dedgeai.agent.security.curve import CLIENT_KEYS_ENV, SERVER_KEY_ENV, ClientSecurity
from dedgeai.models.backend import MAX_SEED, GenerationRequest
from dedgeai.models.errors import InvalidRequest
from dedgeai.models.sizes import SizeError, parse_size

err = Console(stderr=True)
out = Console()

AgentOpt = Annotated[
    str | None,
    typer.Option(
        "--agent", "-a", envvar=ENDPOINT_ENV, help="Agent endpoint (default tcp://127.0.0.1:7700)."
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for each reply before retrying.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (default: the per-user file, or /etc/dedgeai/agent.toml under systemd).",
    ),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a key: --set max_queue=64 (repeatable).")
]
ServerKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--server-key",
        envvar=SERVER_KEY_ENV,
        help="The agent's public key (its agent.key file, or the key): connect with CURVE.",
    ),
]
ClientKeysOpt = Annotated[
    Path | None,
    typer.Option(
        "--client-keys",
        envvar=CLIENT_KEYS_ENV,
        help="Directory of this client's key pair (default: where `dedgeai keys generate` writes).",
    ),
]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_NOT_ID_CHARS = re.compile("[^0-9a-f-]")
_ID_PREFIX = re.compile("^[0-9a-f-]{1,36}$")
INTERRUPTED = ExitCode.INTERRUPTED


def _fail(label: str, style: str, message: object, code: ExitCode) -> typer.Exit:
    # Messages carry remote text (an agent's error message, a peer's name): never markup.
    err.print(
        Text.assemble((f"{render.clean(label, 64)}:", style), " ", render.clean(str(message))),
        soft_wrap=True,  # one line, whatever the terminal's width
    )
    return typer.Exit(code)


@contextlib.contextmanager
def exit_on_errors() -> Iterator[None]:
    """Map library errors to the documented exit codes, with one line on stderr."""
    try:
        yield
    except DedgeaiError as exc:  # agent, models and scheduler errors alike
        label, code = exit_code_of(exc)
        message = exc.message if isinstance(exc, RemoteError) else exc
        style = "yellow" if code is ExitCode.BUSY else "red"
        raise _fail(label, style, message, code) from exc


def _overrides(items: list[str] | None) -> dict[str, Any]:
    return dict(parse_override(item) for item in items or [])


# --- dedgeai agent ... ------------------------------------------------------------


def agent_run(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Run the agent in the foreground (systemd runs it the same way)."""
    from dedgeai.agent.node.service import run_agent

    with exit_on_errors():
        cfg = load_config(config, _overrides(set_))
    raise typer.Exit(run_agent(cfg))


def agent_config(config: ConfigOpt = None, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective configuration, every key with its documentation and default."""
    with exit_on_errors():
        cfg = load_config(config, _overrides(set_))
    if as_json:
        print(json.dumps({**cfg.as_dict(), "source": cfg.source}, indent=2))
    else:
        print(render_toml(cfg))


# --- client commands --------------------------------------------------------------


def _client(
    agent: str | None, timeout: float, server_key: str | None, client_keys: Path | None
) -> AgentClient:
    security = ClientSecurity.resolve(server_key, client_keys)
    return AgentClient(agent, timeout_s=timeout, security=security)


def _task_id(task: str) -> TaskId:
    """The task id the user typed, as the canonical UUID the agent uses."""
    try:
        return TaskId(str(uuid.UUID(task)))
    except ValueError as exc:
        raise InvalidRequest(
            f"task id {task!r} is not a UUID; `dedgeai tasks` lists the ids"
        ) from exc


def _resolve_task(client: AgentClient, task: str) -> TaskId:
    """A full task id, or the one task whose id starts with ``task`` (as git resolves hashes).

    The prefix is matched against the newest ``MAX_TASKS_LIMIT`` tasks the agent lists; no match
    is TaskNotFound, several are InvalidRequest naming them (both exit 2).
    """
    with contextlib.suppress(ValueError):
        return TaskId(str(uuid.UUID(task)))
    prefix = task.strip().lower()
    if not _ID_PREFIX.match(prefix):
        raise InvalidRequest(f"task id {task!r} is not a UUID or a prefix of one")
    rows = client.tasks(MAX_TASKS_LIMIT)
    ids = sorted({row["task"] for row in rows if isinstance(row.get("task"), str)})
    matches = [i for i in ids if i.lower().startswith(prefix)]
    if not matches:
        raise remote_error(ErrorCode.NOT_FOUND.value, f"no task id starts with {prefix!r}")
    if len(matches) > 1:
        shown = ", ".join(render.clean(m, 36) for m in matches[:10])
        more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
        raise InvalidRequest(f"task id prefix {prefix!r} is ambiguous: {shown}{more}")
    return _task_id(matches[0])


def _check_out(path: Path | None) -> None:
    """Refuse an ``--out`` the PNG could not be written to, before anything is asked of an agent.

    A missing parent folder is created (as ``_save`` would); an absent file is probed by
    creating it and removing it again, so a read-only or virtual file system (``/proc``) fails
    here and not after the task has run.
    """
    if path is None:
        return
    if path.is_dir():
        raise InvalidRequest(f"--out {path} is a directory; give a file name, e.g. {path}/cat.png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if not os.access(path, os.W_OK):
                raise PermissionError(13, "Permission denied")
        else:
            with path.open("xb"):
                pass
            path.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InvalidRequest(f"cannot write the image to {path}: {reason}") from exc


def _default_png_path(task: TaskId) -> Path:
    # Built from an id this CLI chose or validated; sanitised again all the same, because a
    # file name must never come from what an agent sent.
    stem = _NOT_ID_CHARS.sub("", task.lower())[:8] or "result"
    return Path(f"dedgeai-{stem}.png")


def _print_json(body: object) -> None:
    print(json.dumps(render.jsonable(body), indent=2))


def _parse_size(size: str) -> tuple[int, int]:
    try:
        return parse_size(size)
    except SizeError as exc:  # an InvalidRequest: exit_on_errors makes it one line, exit 2
        raise SizeError(f"--size: {exc}") from None


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


class _ProgressView:
    """Queue position, then denoising steps, on one rich progress bar."""

    def __init__(self, progress: Progress | None, steps: int) -> None:
        self.progress = progress
        self.bar = progress.add_task("submitting", total=steps) if progress else None

    def __call__(self, reply: Reply) -> None:
        if self.progress is None or self.bar is None:
            return
        stage, step = reply.get("stage"), render.number(reply.get("step"))
        if reply.type == "accepted" or stage == "queued":
            # The description is rich markup: only digits or "?" go in.
            position = reply.get("position")
            shown = (
                position if isinstance(position, int) and not isinstance(position, bool) else "?"
            )
            text = f"queued (position {shown})"
            self.progress.update(self.bar, description=text)
        elif stage in ("denoise", "decode"):
            text = "denoising" if stage == "denoise" else "decoding"
            self.progress.update(self.bar, description=text, completed=step)


def _steps(reply: Reply) -> int:
    steps = reply.get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else 1


def _save(done: Reply, out_path: Path | None, task: TaskId) -> Path | None:
    if not done.png:
        return None  # emulated backend: no image
    if not done.png.startswith(_PNG_MAGIC):
        raise ProtocolError(ErrorCode.BAD_FRAME, "the agent sent an image that is not a PNG")
    path = out_path or _default_png_path(task)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(done.png)
    except OSError as exc:
        raise InvalidRequest(f"cannot write the image to {path}: {exc.strerror}") from exc
    return path


def _interrupted(client: AgentClient, task: TaskId) -> typer.Exit:
    """Ctrl-C while waiting: the task still runs on the agent. Say so, and offer to cancel it."""
    err.print(Text(f"interrupted: task {task} is still on the agent"))
    if sys.stdin.isatty():
        with contextlib.suppress(KeyboardInterrupt, EOFError, typer.Abort):
            if typer.confirm("cancel it?", default=False, err=True):
                with exit_on_errors():
                    reply = client.cancel(task)
                err.print(Text(f"{task}: {render.text(reply.get('state'))}"))
                return typer.Exit(INTERRUPTED)
    err.print(Text(f"cancel it with: dedgeai cancel {task} (or fetch it: dedgeai result {task})"))
    return typer.Exit(INTERRUPTED)


def _report(done: Reply, path: Path | None, client_total_s: float | None, as_json: bool) -> None:
    if as_json:
        body = {**done.fields, "path": str(path) if path else None}
        if client_total_s is not None:
            body["client_total_s"] = client_total_s
        _print_json(body)
        return
    out.print(render.done_table(done.fields, client_total_s))
    if path is not None:
        out.print(Text.assemble("image: ", (str(path), "bold")))
    else:
        out.print(Text("no image: the agent runs the EMULATED backend", style="yellow"))


def submit(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    agent: AgentOpt = None,
    steps: Annotated[int, typer.Option(help="Denoising steps (1-100).")] = 28,
    size: Annotated[str, typer.Option(help="WxH, multiples of 16 in 256-2048.")] = "1024x1024",
    seed: Annotated[int | None, typer.Option(help="Seed (default: random).")] = None,
    negative: Annotated[str, typer.Option(help="Negative prompt.")] = "",
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance, 0-30.")] = 5.0,
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="PNG path.")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the task id and exit.")] = False,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    server_key: ServerKeyOpt = None,
    client_keys: ClientKeysOpt = None,
) -> None:
    """Submit a prompt, show its progress, save the PNG."""
    with exit_on_errors():
        width, height = _parse_size(size)
        request = GenerationRequest(
            prompt=prompt,
            negative_prompt=negative,
            steps=steps,
            width=width,
            height=height,
            guidance=guidance,
            seed=random.randint(0, MAX_SEED) if seed is None else seed,
        ).validate()
        _check_out(out_path)  # before the task exists: a bad path must not cost a run
        task = new_task_id()  # chosen here: the reply must name it (AgentClient.submit)
        with _client(agent, timeout, server_key, client_keys) as client:
            started = time.perf_counter()
            if no_wait:
                accepted = client.submit(request, task=task, wait=False)
                if as_json:
                    print(json.dumps(render.jsonable(accepted.fields)))
                else:
                    print(task)
                return
            show = not as_json and err.is_terminal
            try:
                with _progress() if show else contextlib.nullcontext() as progress:
                    view = _ProgressView(progress, request.steps)
                    _accepted, done = client.generate(request, view, task=task)
            except KeyboardInterrupt:
                raise _interrupted(client, task) from None
            total_s = time.perf_counter() - started
        _report(done, _save(done, out_path, task), total_s, as_json)


def status(
    agent: AgentOpt = None,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    server_key: ServerKeyOpt = None,
    client_keys: ClientKeysOpt = None,
) -> None:
    """The agent's device, telemetry, backlog, capacity, model and plan; the cluster it sees."""
    with exit_on_errors(), _client(agent, timeout, server_key, client_keys) as client:
        body = client.status()
    if as_json:
        _print_json(body)
    else:
        out.print(render.status_table(body))
        if render.mapping(body.get("cluster")):
            out.print(render.cluster_table(body["cluster"], out.width))


def tasks(
    agent: AgentOpt = None,
    limit: Annotated[int, typer.Option(help="Newest N tasks (1-1000).")] = 20,
    state: Annotated[
        str | None, typer.Option(help="queued, running, done, failed, cancelled.")
    ] = None,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    server_key: ServerKeyOpt = None,
    client_keys: ClientKeysOpt = None,
) -> None:
    """Recent tasks, newest first."""
    with exit_on_errors(), _client(agent, timeout, server_key, client_keys) as client:
        rows = client.tasks(limit, state)
    if as_json:
        _print_json(rows)
    else:
        out.print(render.tasks_table(rows, time.time(), out.width))


def result(
    task: Annotated[str, typer.Argument(help="Task id, or a unique prefix of one (see `tasks`).")],
    agent: AgentOpt = None,
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="PNG path.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for an unfinished task.")
    ] = True,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    server_key: ServerKeyOpt = None,
    client_keys: ClientKeysOpt = None,
) -> None:
    """Fetch a task's PNG and timings (waits for it unless --no-wait)."""
    with exit_on_errors():
        _check_out(out_path)
        with _client(agent, timeout, server_key, client_keys) as client:
            task_id = _resolve_task(client, task)
            reply = client.result(task_id, wait=wait)
            if reply.type not in ("done", "progress"):
                raise client.malformed(f"`{reply.type}` in answer to `result`")
            if reply.type == "progress" and wait:
                show = not as_json and err.is_terminal
                with _progress() if show else contextlib.nullcontext() as progress:
                    view = _ProgressView(progress, _steps(reply))
                    view(reply)
                    reply = client.wait(task_id, view)
        if reply.type == "progress":  # --no-wait on an unfinished task
            if as_json:
                print(json.dumps(render.jsonable({"type": reply.type, **reply.fields})))
            else:
                stage = render.text(reply.get("stage"))
                step, steps = render.text(reply.get("step")), render.text(reply.get("steps"))
                position = render.text(reply.get("position"))
                where = f"position {position}" if stage == "queued" else f"step {step}/{steps}"
                out.print(Text(f"{task_id}: {stage} ({where})"))
            return
        with exit_on_errors():
            path = _save(reply, out_path, task_id)
        _report(reply, path, None, as_json)


def cancel(
    task: Annotated[str, typer.Argument(help="Task id, or a unique prefix of one.")],
    agent: AgentOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    server_key: ServerKeyOpt = None,
    client_keys: ClientKeysOpt = None,
) -> None:
    """Cancel a queued task, or a running one at its next step."""
    with exit_on_errors(), _client(agent, timeout, server_key, client_keys) as client:
        task_id = _resolve_task(client, task)
        reply = client.cancel(task_id)
    out.print(Text(f"{task_id}: {render.text(reply.get('state'))}"))


def register(app: typer.Typer) -> None:
    """Add `dedgeai agent ...` and the client commands to the root app."""
    agent_app = typer.Typer(help="Run or inspect the local agent daemon.", no_args_is_help=True)
    agent_app.command("run")(agent_run)
    agent_app.command("config")(agent_config)
    app.add_typer(agent_app, name="agent")
    for command in (submit, status, tasks, result, cancel):
        app.command()(command)
