"""Key files for CURVE: an agent's key pair and the directory of authorized public keys.

An agent has one key pair in its ``keys_dir`` (``agent.key`` public, ``agent.key_secret``
secret, mode 0600, written atomically) and accepts the peers and clients whose public keys
sit in ``authorized_keys_dir`` (one ``*.key`` file each, named after its holder). Keys are
pyzmq's z85 text; ``fingerprint`` is the short id shown in status and mDNS records. No
sockets here: ``security.py`` sets sockets up with these keys.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq.auth
from zmq.utils import z85

from dedgeai.agent.config import default_config_path
from dedgeai.agent.errors import SecurityError

log = logging.getLogger("dedgeai.agent.keys")

KEY_NAME = "agent"
PUBLIC_FILE = f"{KEY_NAME}.key"
SECRET_FILE = f"{KEY_NAME}.key_secret"
AUTHORIZED_DIR = "authorized_keys"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # z85, 40 characters
    secret: bytes
    public_path: Path


@dataclass(frozen=True)
class AuthorizedKey:
    name: str
    public: bytes | None  # None: the file holds no valid key
    path: Path


def default_keys_dir() -> Path:
    """Where ``dedgeai keys generate`` writes: the directory of the default config file."""
    return default_config_path().parent


def _valid_key(key: bytes) -> bool:
    try:
        return len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


# --- key files -------------------------------------------------------------------


def generate_keypair(directory: Path, force: bool = False) -> KeyPair:
    """Write a new ``agent.key`` / ``agent.key_secret`` (0600) into ``directory``.

    Args:
        directory: created (mode 0700) when missing.
        force: replace an existing pair; without it an existing pair is a SecurityError.

    Returns:
        The new key pair.
    """
    directory = Path(directory).expanduser()
    existing = [directory / f for f in (PUBLIC_FILE, SECRET_FILE) if (directory / f).exists()]
    if existing and not force:
        raise SecurityError(
            f"{existing[0]} already exists; pass --force to replace the key pair "
            "(clients and peers that authorized the old public key must authorize the new one)"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Written in a private (0700) scratch directory, then renamed into place: the secret
        # is never readable by others, not even between create_certificates and chmod.
        scratch = Path(tempfile.mkdtemp(prefix=".keys-", dir=directory))
        try:
            public, secret = zmq.auth.create_certificates(scratch, KEY_NAME)
            os.chmod(secret, 0o600)
            os.chmod(public, 0o644)
            os.replace(secret, directory / SECRET_FILE)
            os.replace(public, directory / PUBLIC_FILE)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except OSError as exc:
        raise SecurityError(f"cannot write keys into {directory}: {exc.strerror}") from exc
    return load_keypair(directory)


def load_keypair(directory: Path) -> KeyPair:
    """This agent's (or client's) key pair from ``directory`` (or its ``agent.key_secret``)."""
    directory = Path(directory).expanduser()
    secret_path = directory if directory.is_file() else directory / SECRET_FILE
    if not secret_path.exists():
        raise SecurityError(
            f"no key pair in {secret_path.parent}: run `dedgeai keys generate --dir "
            f"{secret_path.parent}`"
        )
    try:
        public, secret = zmq.auth.load_certificate(secret_path)
        mode = stat.S_IMODE(secret_path.stat().st_mode)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"cannot read the secret key {secret_path}: {exc}") from exc
    if secret is None or not _valid_key(secret) or not _valid_key(public):
        raise SecurityError(f"{secret_path} holds no valid CURVE secret key")
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o); chmod 600 it", secret_path, mode)
    return KeyPair(public, secret, secret_path.with_suffix(".key"))


def load_public_key(spec: str | Path, authorized_dir: Path | None = None) -> bytes:
    """A z85 public key from a key file, a literal 40-character key, or a name in ``authorized_dir``."""
    text = str(spec)
    path = Path(text).expanduser()
    if not path.exists() and authorized_dir is not None and _NAME.match(text):
        named = Path(authorized_dir) / f"{text}.key"
        path = named if named.exists() else path
    if path.is_dir():
        path = path / PUBLIC_FILE
    if path.is_file():
        try:
            public, _secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise SecurityError(f"cannot read a public key from {path}: {exc}") from exc
        if not _valid_key(public):
            raise SecurityError(f"{path} holds no valid CURVE public key")
        return public
    if _valid_key(text.encode()):
        return text.encode()
    raise SecurityError(
        f"{text!r} is neither a key file nor a 40-character Z85 public key "
        "(`dedgeai keys show` prints one)"
    )


def _public_file_text(public: bytes) -> str:
    # The format zmq.auth.load_certificate reads (czmq's public certificate).
    return (
        "#   ZeroMQ CURVE Public Certificate, authorized by `dedgeai keys authorize`\n"
        "metadata\ncurve\n"
        f'    public-key = "{public.decode()}"\n'
    )


def authorize(authorized_dir: Path, public_key: str | Path, name: str | None = None) -> Path:
    """Add a public key (file or literal) to ``authorized_dir`` as ``<name>.key``.

    Only the public half is written, even from a secret key file. The default name is the
    file's stem, or ``key-<fingerprint>`` for a literal key or a file named ``agent.key``.
    Authorizing the same key under the same name again is a no-op.

    Returns:
        The path of the authorized key file.
    """
    public = load_public_key(public_key)
    stem = Path(str(public_key)).stem if Path(str(public_key)).expanduser().exists() else ""
    name = name or (stem if stem and stem != KEY_NAME else f"key-{fingerprint(public)}")
    if not _NAME.match(name):
        raise SecurityError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (≤ 64)")
    authorized_dir = Path(authorized_dir).expanduser()
    target = authorized_dir / f"{name}.key"
    if target.exists():
        try:
            current, _ = zmq.auth.load_certificate(target)
        except (OSError, ValueError):
            current = None
        if current == public:
            return target
        raise SecurityError(f"{target} already holds another key; choose another --name")
    try:
        authorized_dir.mkdir(parents=True, exist_ok=True)  # public keys: the service reads them
        tmp = target.with_suffix(".tmp")
        tmp.write_text(_public_file_text(public))
        tmp.replace(target)
    except OSError as exc:
        raise SecurityError(f"cannot write {target}: {exc.strerror}") from exc
    return target


def authorized_keys(authorized_dir: Path) -> list[AuthorizedKey]:
    """The ``*.key`` files of ``authorized_dir`` by name; unreadable ones with ``public=None``."""
    directory = Path(authorized_dir).expanduser()
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.key")):
        try:
            public: bytes | None = zmq.auth.load_certificate(path)[0]
        except (OSError, ValueError):
            public = None
        found.append(
            AuthorizedKey(path.stem, public if public and _valid_key(public) else None, path)
        )
    return found


def fingerprint(public: bytes) -> str:
    """A short, file-name-safe id of a public key (its SHA-256, hex)."""
    return hashlib.sha256(public).hexdigest()[:12]
