"""`dedgeai keys generate|show|authorize|list`: the CURVE key pair and the authorized keys.

Each authorized key has a role (``client``, ``peer`` or ``admin``: ``--role``, default
client): clients submit and see their own tasks, peers also forward tasks and gossip,
admins see and cancel every task (``agent/security/authority.py``).

Keys live where the agent reads them: ``keys_dir`` and ``authorized_keys_dir`` of its
configuration (``--config``, else the default file), or ``--dir`` for both (keys in DIR,
authorized keys in DIR/authorized_keys). Exit codes: 0 done · 2 bad input (a key pair
already there without ``--force``, no key pair, an unreadable key file, a bad name).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dedgeai.agent.client.cli_tasks import ConfigOpt, JsonOpt, exit_on_errors
from dedgeai.agent.node.config import load_config
from dedgeai.agent.security.curve import SecurityConfig
from dedgeai.agent.security.keys import (
    AUTHORIZED_DIR,
    DEFAULT_ROLE,
    Role,
    authorize,
    authorized_keys,
    fingerprint,
    generate_keypair,
    load_keypair,
)

out = Console()

app = typer.Typer(
    help="CURVE keys: this agent's key pair and the public keys it accepts.",
    no_args_is_help=True,
)

DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        "-d",
        help="Keys directory (default: the agent's `keys_dir`, i.e. its config directory).",
    ),
]


def _where(directory: Path | None, config: Path | None) -> SecurityConfig:
    if directory is not None:
        directory = directory.expanduser()
        return SecurityConfig(directory, directory / AUTHORIZED_DIR)
    return SecurityConfig.from_config(load_config(config))


@app.command()
def generate(
    directory: DirOpt = None,
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key pair.")] = False,
) -> None:
    """Write this agent's key pair: agent.key (public) and agent.key_secret (mode 0600)."""
    with exit_on_errors():
        keys = _where(directory, config)
        pair = generate_keypair(keys.keys_dir, force=force)
    out.print(
        f"secret key: {pair.public_path.with_name('agent.key_secret')} (mode 0600)", soft_wrap=True
    )
    out.print(f"public key: {pair.public_path}", soft_wrap=True)
    out.print(pair.public.decode(), highlight=False, markup=False)
    out.print(
        "give the public key file to the agents this one connects to, "
        "and run `dedgeai keys authorize FILE` there"
    )


@app.command()
def show(directory: DirOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Print this agent's public key (safe to share; the secret key is never printed)."""
    with exit_on_errors():
        pair = load_keypair(_where(directory, config).keys_dir)
    if as_json:
        body = {"public_key": pair.public.decode(), "path": str(pair.public_path)}
        print(json.dumps({**body, "fingerprint": fingerprint(pair.public)}))
    else:
        print(pair.public.decode())


@app.command("authorize")
def authorize_command(
    public_key: Annotated[
        str, typer.Argument(help="A public key file (agent.key of a peer or client), or the key.")
    ],
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="File name in authorized_keys.")
    ] = None,
    role: Annotated[
        Role,
        typer.Option(
            "--role",
            "-r",
            help="client: submit, own tasks · peer: another agent · admin: every task.",
        ),
    ] = Role(DEFAULT_ROLE),
    directory: DirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Allow a peer or client: copy its public key into authorized_keys (no restart needed).

    Authorizing a key again with another --role changes its role.
    """
    with exit_on_errors():
        where = _where(directory, config).authorized_keys_dir
        target = authorize(where, public_key, name, role=role.value)
    out.print(Text(f"authorized as {role.value}: {target}"), soft_wrap=True)


@app.command("list")
def list_command(
    directory: DirOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """The authorized public keys (this agent's own key is always accepted too)."""
    with exit_on_errors():
        keys = _where(directory, config)
        entries = authorized_keys(keys.authorized_keys_dir)
    rows = [
        {
            "name": e.name,
            "role": e.role if e.public else None,
            "public_key": e.public.decode() if e.public else None,
            "fingerprint": fingerprint(e.public) if e.public else None,
            "path": str(e.path),
        }
        for e in entries
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=Text(f"authorized keys in {keys.authorized_keys_dir}"))
    for column in ("name", "role", "public key", "fingerprint"):
        table.add_column(column)
    for row in rows:
        key = Text(row["public_key"]) if row["public_key"] else Text("invalid", style="red")
        # Z85 has "[" and file names may too: Text, never markup.
        table.add_row(Text(row["name"]), row["role"] or "-", key, row["fingerprint"] or "")
    out.print(table)
    if not rows:
        out.print("none: only this agent's own key is accepted")


def register(root: typer.Typer) -> None:
    """Add `dedgeai keys ...` to the root app."""
    root.add_typer(app, name="keys")
