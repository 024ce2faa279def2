"""Key files for CURVE: an agent's key pair and the directory of authorized public keys.

An agent has one key pair in its ``keys_dir`` (``agent.key`` public, ``agent.key_secret``
secret, mode 0600, written atomically) and accepts the peers and clients whose public keys
sit in ``authorized_keys_dir`` (one ``*.key`` file each, named after its holder). Keys are
pyzmq's z85 text; ``fingerprint`` is the short id shown in status and mDNS records. No
sockets here: ``security.py`` sets sockets up with these keys.

An authorized key file may carry its holder's role (``agent/security/authority.py``) in the
``metadata`` section of the zmq certificate format, which ``zmq.auth.load_certificate``
ignores and ``read_role`` parses strictly::

    metadata
        role = "peer"
    curve
        public-key = "..."

No role, or one that is not ``client``, ``peer`` or ``admin``, is ``client``. A key listed
in several files with different roles is ``client`` too (the least it could be).
``authorized_set`` caches one scan per directory until the directory changes (a new file,
a rename, a removal: what ``dedgeai keys authorize`` and ``rm`` do); an in-place edit of a
key file is seen after the next change of the directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import zmq.auth
from zmq.utils import z85

from dedgeai.agent.errors import SecurityError
from dedgeai.agent.node.config import default_config_path

log = logging.getLogger("dedgeai.agent.security.keys")

KEY_NAME = "agent"
PUBLIC_FILE = f"{KEY_NAME}.key"
SECRET_FILE = f"{KEY_NAME}.key_secret"
AUTHORIZED_DIR = "authorized_keys"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_ROLE_LINE = re.compile(r"^[ \t]+role[ \t]*=(.*)$")
_ROLE_VALUE = re.compile(r'^[ \t]*"([a-z]{1,16})"[ \t]*$')
MAX_KEY_FILE_BYTES = 64 * 1024  # a certificate is ~200 bytes; anything this big is not one
# A directory changed less than this before it was scanned may change again within the
# same mtime tick (1-2 s on some file systems): such a scan is not trusted ("racy git").
RACY_WINDOW_NS = 2_000_000_000
_WARNED_LIMIT = 1024


class Role(str, Enum):
    """What an authorized key may do; enforced by ``agent/security/authority.py``."""

    CLIENT = "client"
    PEER = "peer"
    ADMIN = "admin"


ROLES = tuple(role.value for role in Role)
DEFAULT_ROLE = Role.CLIENT.value


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
    role: str = DEFAULT_ROLE  # one of ROLES


@dataclass(frozen=True)
class AuthorizedSet:
    """One scan of an authorized-keys directory."""

    entries: tuple[AuthorizedKey, ...] = ()
    keys: frozenset[bytes] = frozenset()  # the valid public keys (z85)
    roles: Mapping[bytes, str] = field(default_factory=dict)  # z85 public key -> role


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


def _public_file_text(public: bytes, role: str) -> str:
    # The format zmq.auth.load_certificate reads (czmq's public certificate), role in metadata.
    return (
        "#   ZeroMQ CURVE Public Certificate, authorized by `dedgeai keys authorize`\n"
        f'metadata\n    role = "{role}"\ncurve\n'
        f'    public-key = "{public.decode()}"\n'
    )


def authorize(
    authorized_dir: Path,
    public_key: str | Path,
    name: str | None = None,
    role: str = DEFAULT_ROLE,
) -> Path:
    """Add a public key (file or literal) to ``authorized_dir`` as ``<name>.key``, with a role.

    Only the public half is written, even from a secret key file. The default name is the
    file's stem, or ``key-<fingerprint>`` for a literal key or a file named ``agent.key``.
    Authorizing a key again (under any name) sets its role in every file that holds it, so
    that the key has one role.

    Args:
        authorized_dir: created when missing.
        public_key: a public or secret key file, a key directory, or the 40-character key.
        name: the file name (without ``.key``).
        role: one of ROLES.

    Returns:
        The path of the authorized key file.
    """
    if role not in ROLES:
        raise SecurityError(f"--role {role!r}: use one of {', '.join(ROLES)}")
    public = load_public_key(public_key)
    stem = Path(str(public_key)).stem if Path(str(public_key)).expanduser().exists() else ""
    name = name or (stem if stem and stem != KEY_NAME else f"key-{fingerprint(public)}")
    if not _NAME.match(name):
        raise SecurityError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (≤ 64)")
    authorized_dir = Path(authorized_dir).expanduser()
    target = authorized_dir / f"{name}.key"
    if target.exists() and _read_entry(target).public != public:
        raise SecurityError(f"{target} already holds another key; choose another --name")
    same_key = [e.path for e in authorized_keys(authorized_dir) if e.public == public]
    for path in {target, *same_key}:
        if not path.exists() or read_role(path) != role:
            _write_public(path, public, role)
    return target


def _write_public(target: Path, public: bytes, role: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # public keys: the service reads them
        tmp = target.with_suffix(".tmp")
        tmp.write_text(_public_file_text(public, role))
        tmp.replace(target)  # a rename: the directory's mtime changes, caches rescan
    except OSError as exc:
        raise SecurityError(f"cannot write {target}: {exc.strerror}") from exc


# --- roles -----------------------------------------------------------------------

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(path: Path, what: str) -> None:
    """Log ``what`` about ``path`` once per process (bounded: a directory is local, yet...)."""
    with _warned_lock:
        if (str(path), what) in _warned:
            return
        if len(_warned) >= _WARNED_LIMIT:
            _warned.clear()
        _warned.add((str(path), what))
    log.warning("%s: %s", path, what)


def read_role(path: Path) -> str | None:
    """The ``role`` of a key file's ``metadata`` section; None when it has none.

    Strict: only an indented ``role = "..."`` line inside ``metadata`` counts; a malformed
    value, or two different ones, is returned as written so that it is never a known role.
    """
    found: list[str] = []
    section = ""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
        lines = data.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if len(data) > MAX_KEY_FILE_BYTES:
        return "<oversized file>"
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            section = line.strip()
            continue
        match = _ROLE_LINE.match(line) if section == "metadata" else None
        if match:
            value = _ROLE_VALUE.match(match.group(1))
            # Only the quoted lower-case form `dedgeai keys authorize` writes; anything else
            # is not a role (and is reported as written, marked).
            found.append(value.group(1) if value else f"{match.group(1).strip()} (malformed)")
    if not found:
        return None
    return found[0] if len(set(found)) == 1 else " / ".join(sorted(set(found)))


def _read_entry(path: Path) -> AuthorizedKey:
    try:
        public: bytes | None = zmq.auth.load_certificate(path)[0]
    except (OSError, ValueError):
        public = None
    if public is None or not _valid_key(public):
        return AuthorizedKey(path.stem, None, path)
    role = read_role(path)
    if role is not None and role not in ROLES:
        _warn_once(path, f"unknown role {role!r} (use {', '.join(ROLES)}): treated as client")
        role = None
    return AuthorizedKey(path.stem, public, path, role or DEFAULT_ROLE)


def authorized_keys(authorized_dir: Path) -> list[AuthorizedKey]:
    """The ``*.key`` files of ``authorized_dir`` by name; unreadable ones with ``public=None``."""
    directory = Path(authorized_dir).expanduser()
    if not directory.is_dir():
        return []
    return [_read_entry(path) for path in sorted(directory.glob("*.key"))]


def _scan(directory: Path) -> AuthorizedSet:
    entries = tuple(authorized_keys(directory))
    roles: dict[bytes, str] = {}
    for entry in entries:
        if entry.public is None:
            _warn_once(entry.path, "ignored: no valid CURVE public key in it")
            continue
        known = roles.setdefault(entry.public, entry.role)
        if known != entry.role:
            _warn_once(entry.path, "this key is authorized with several roles: treated as client")
            roles[entry.public] = DEFAULT_ROLE
    return AuthorizedSet(entries, frozenset(roles), roles)


class _ScanCache:
    """The last scan of each directory, kept while the directory's (mtime, inode) stay put."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scans: dict[Path, tuple[tuple[int, int, int], int, AuthorizedSet]] = {}

    def get(self, directory: Path) -> AuthorizedSet:
        try:
            info = directory.stat()
        except OSError:
            return AuthorizedSet()
        stamp = (info.st_mtime_ns, info.st_ino, info.st_dev)
        with self._lock:
            cached = self._scans.get(directory)
            if cached is not None and cached[0] == stamp and cached[1] - stamp[0] > RACY_WINDOW_NS:
                return cached[2]
            scanned_ns = time.time_ns()
            result = _scan(directory)
            self._scans[directory] = (stamp, scanned_ns, result)
            return result


_cache = _ScanCache()


def authorized_set(authorized_dir: Path) -> AuthorizedSet:
    """The authorized keys and their roles, rescanned only when the directory changed."""
    return _cache.get(Path(authorized_dir).expanduser())


def roles_by_key(authorized_dir: Path) -> dict[bytes, str]:
    """z85 public key -> role of every valid authorized key (cached, cheap to call often)."""
    return dict(authorized_set(authorized_dir).roles)


def fingerprint(public: bytes) -> str:
    """A short, file-name-safe id of a public key (its SHA-256, hex)."""
    return hashlib.sha256(public).hexdigest()[:12]
