"""The agent's configuration: one flat TOML table, every key declared once in ``KEYS``.

``load_config`` reads the file, applies ``--set key=value`` overrides and checks every
key; unknown keys and wrong types are ConfigErrors that say what is allowed. The same
declarations render ``dedgeai agent config`` and the documented example file.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import platformdirs

from dedgeai.agent.errors import ConfigError
from dedgeai.models.sizes import SizeError, parse_size
from dedgeai.scheduler.policy_names import DEFAULT_POLICY, LEARNED, POLICIES, policies_text

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SERVICE_CONFIG_PATH = Path("/etc/dedgeai/agent.toml")
DEFAULT_ENDPOINT = "tcp://127.0.0.1:7700"
APP_NAME = "dedgeai"


@dataclass(frozen=True)
class Key:
    name: str
    type: type
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None  # returns a complaint or None


MAX_PROBE_TIMEOUT_S = 10.0  # pod2: a probe answer later than this is no fresh load
MAX_WARM_START_STEPS = 100_000  # ~3 min of CPU: beyond it a warm start never ends


def _positive(value: float) -> str | None:
    return None if 0 < value < math.inf else "must be a finite number > 0"


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    return lambda value: None if value in allowed else f"must be one of {list(allowed)}"


def _display_name(value: str) -> str | None:
    from dedgeai.agent.node.protocol import (  # peers check it the same way
        MAX_NAME_CHARS,
        valid_name,
    )

    if valid_name(value):
        return None
    return f"must be ≤ {MAX_NAME_CHARS} printable characters without markup like `[b]`"


def _queue_bound(value: int) -> str | None:
    return None if 1 <= value <= 1_000_000 else "must be in 1..1000000"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be 0 (off) or a TCP port 1..65535"


def _peers(value: list[Any]) -> str | None:
    for item in value:
        endpoint = item.partition("=")[0] if isinstance(item, str) else ""
        if not (endpoint.startswith("tcp://") and ":" in endpoint[len("tcp://") :]):
            return (
                f'entries must look like "tcp://HOST:PORT" or "tcp://HOST:PORT=KEY", got {item!r}'
            )
    return None


def _sizes(value: list[Any]) -> str | None:
    for item in value:
        try:
            parse_size(item)
        except SizeError as exc:
            return f"entries: {exc}"
    return None if value else "must list at least one size"


KEYS: tuple[Key, ...] = (
    Key(
        "endpoint",
        str,
        DEFAULT_ENDPOINT,
        "ZeroMQ endpoint the agent binds (tcp://HOST:PORT, PORT may be *, or ipc://PATH)",
    ),
    Key(
        "insecure",
        bool,
        False,
        "allow plain TCP beyond loopback: binding without CURVE, and links to peers beyond "
        "loopback when this agent has no key pair",
    ),
    Key(
        "curve",
        bool,
        True,
        "CURVE encryption and authentication (zmq.auth): on when the key pair exists in "
        "`keys_dir` or the endpoint is beyond loopback; false: never (loopback or `insecure`)",
    ),
    Key(
        "keys_dir",
        str,
        "",
        "directory of this agent's key pair (agent.key, agent.key_secret, from `dedgeai keys "
        "generate`); empty: the directory of the default config file",
    ),
    Key(
        "authorized_keys_dir",
        str,
        "",
        "public keys (*.key) of the peers and clients allowed to connect; "
        "empty: `keys_dir`/authorized_keys",
    ),
    Key("name", str, "", "label shown by `dedgeai status`; empty: the host name", _display_name),
    Key(
        "state_dir",
        str,
        "",
        "journal, results and caches; empty: $STATE_DIRECTORY under systemd, "
        "else the per-user state directory",
    ),
    Key(
        "model",
        str,
        "tiny",
        'backend: "tiny" (random weights, images are noise), "emulated" (timing only) '
        "or a path to SD3-medium weights",
    ),
    Key("device", str, "", 'torch device such as "cuda:0"; empty: cuda when available, else cpu'),
    Key(
        "vram_budget_bytes",
        int,
        0,
        "GPU memory the model may use; 0: free memory read with pynvml minus a margin",
    ),
    Key(
        "placement",
        str,
        "",
        "force a placement kind instead of choosing by budget; empty: automatic",
    ),
    Key(
        "emulated_steps_per_second",
        float,
        10.0,
        'speed of the "emulated" backend at 512x512',
        _positive,
    ),
    Key(
        "max_queue",
        int,
        256,
        "unfinished tasks (queued, forwarded, held) beyond which `submit` gets `error: busy`",
        _queue_bound,
    ),
    Key(
        "journal_sync",
        str,
        "normal",
        '"normal": survives crashes of the agent; "full": also power loss (fsync per commit)',
        _one_of("normal", "full"),
    ),
    Key(
        "retention_max_results",
        int,
        1000,
        "finished tasks (and their images) kept; older ones are deleted",
        _positive,
    ),
    Key(
        "retention_max_age_s",
        float,
        604800.0,
        "finished tasks older than this are deleted",
        _positive,
    ),
    Key(
        "retention_max_bytes",
        int,
        2 * 1024**3,
        "total size of the kept result files (images and metadata); the oldest finished "
        "tasks are deleted first; 0: no size limit",
        lambda value: None if value >= 0 else "must be >= 0 (0: no size limit)",
    ),
    Key("telemetry_interval_s", float, 1.0, "seconds between GPU/CPU telemetry samples", _positive),
    Key("metrics_port", int, 0, "Prometheus metrics HTTP port; 0: off", _port),
    Key("metrics_address", str, "127.0.0.1", "address the metrics HTTP server listens on"),
    Key(
        "profile_sizes",
        list,
        ["512x512"],
        "image sizes WxH whose denoising speed is measured at start (the advertised capacity)",
        _sizes,
    ),
    Key("profile_steps", int, 4, "denoising steps per size when measuring capacity", _positive),
    Key(
        "shutdown_grace_s",
        float,
        8.0,
        "on SIGTERM, seconds to wait for the current step before exiting",
        _positive,
    ),
    Key(
        "log_level",
        str,
        "info",
        "debug, info, warning or error",
        _one_of("debug", "info", "warning", "error"),
    ),
    Key(
        "peers",
        list,
        [],
        "endpoints of the other agents (tcp://HOST:PORT); this agent's own endpoint may be "
        "listed too (one list for the whole cluster) and is skipped. With CURVE, "
        "tcp://HOST:PORT=KEY pins the peer's public key (KEY: a name in authorized_keys, a key "
        "file or a literal key); without =KEY the peer must hold one of the authorized keys",
        _peers,
    ),
    Key(
        "policy",
        str,
        DEFAULT_POLICY,
        f"where each submitted task runs: {policies_text()}; pod2 (the default) asks 2 peers "
        "for their load now (drawn as probe_targets says) and takes the earliest estimated "
        "finish among them and here",
        _one_of(*POLICIES),
    ),
    Key(
        "probe_timeout_s",
        float,
        0.0,
        "pod2: seconds a task waits for the probed peers' answers (a silent one is masked); "
        "0: the larger of 20 ms and 4 round trips of the slowest probed link",
        # bounded: a task waits this long for a frozen peer before it is placed (NaN fails)
        lambda value: (
            None if 0 <= value <= MAX_PROBE_TIMEOUT_S else f"must be in 0..{MAX_PROBE_TIMEOUT_S:g}"
        ),
    ),
    Key(
        "probe_targets",
        str,
        "soft-greedy",
        "pod2 and a learned policy's guard control: which peers are probed; soft-greedy: 2 "
        "drawn from soft-greedy's choice on the last gossip (2 % uniform), which finds fast "
        "idle peers (docs/results_cluster.md, Informed probes); uniform: 2 at random",
        _one_of("uniform", "soft-greedy"),
    ),
    Key(
        "work_stealing",
        bool,
        False,
        "when idle, pull one queued task from the peer that reports the largest backlog (it "
        "gives its last queued task only if this agent would finish it sooner); every agent "
        "answers such requests whatever this says",
    ),
    Key(
        "learn",
        bool,
        True,
        f"online learning for the learned policies ({', '.join(LEARNED)}) from observed "
        "service delays",
    ),
    Key(
        "policy_checkpoint",
        str,
        "",
        "a policy from `dedgeai sim train` to start from when the state directory has none "
        "(<state_dir>/policy.pt, where online learning saves)",
    ),
    Key(
        "policy_actions",
        str,
        "sample",
        "how a learned policy picks a target at run time: sample (draw from its probabilities "
        "π, which spreads agents that see the same stale gossip; DQN always takes argmax) or "
        "argmax (the most likely live server, the paper's evaluation step)",
        _one_of("argmax", "sample"),
    ),
    Key(
        "lad_actor",
        str,
        "ladn",
        "the network behind policy = lad: ladn (the paper's, over the whole state; learns online)"
        " or scorer (one shared-weight network per server, for any cluster size; learns online,"
        " starting from the packaged default scheduler/data/lad_scorer_default.pt when no"
        " checkpoint is configured or saved)",
        _one_of("ladn", "scorer"),
    ),
    Key(
        "lad_mode",
        str,
        "place",
        "what policy = lad (with lad_actor = scorer) decides: place (the server each task runs "
        "on, from the last gossip: the paper's way) or probe (which 2 peers to ask for their "
        "load now, drawn from LAD-TS's π on the gossip; the earliest estimated finish among "
        "them and here then places the task, as pod2 does, and LAD-TS learns from those "
        "placements' delays: the twin's pod2-lad, docs/results_cluster.md, Informed probes)",
        _one_of("place", "probe"),
    ),
    Key(
        "explore_epsilon",
        float,
        0.02,
        "with policy_actions = argmax (and for DQN), the share of decisions sent to a uniformly "
        "drawn live server instead, so online learning still sees other actions; 0: never",
        lambda value: None if 0.0 <= value <= 1.0 else "must be between 0 and 1",
    ),
    Key("train_steps_per_s", float, 2.0, "upper bound on online training steps", _positive),
    Key(
        "learn_warmup",
        int,
        300,
        "finished tasks the learned policy waits for before its first training step",
        _positive,
    ),
    Key(
        "warm_start_steps",
        int,
        2000,
        "cloning steps of a fresh learned policy's warm start (it imitates soft greedy; greedy "
        "decides meanwhile): ~3 s of CPU at the default, fewer agree less with greedy",
        lambda value: (
            None if 1 <= value <= MAX_WARM_START_STEPS else f"must be in 1..{MAX_WARM_START_STEPS}"
        ),
    ),
    Key(
        "gossip_interval_s",
        float,
        1.0,
        "seconds between telemetry messages to peers; 3 silent intervals mark a peer down",
        _positive,
    ),
    Key(
        "gossip",
        str,
        "all",
        "all: gossip with every peer each interval (O(N) messages per box); partial: with "
        "`gossip_fanout` peers of a shuffled round-robin, relaying a digest of other reports, "
        "with SWIM failure detection (constant per box; docs/scaling.md §2)",
        _one_of("all", "partial"),
    ),
    Key(
        "gossip_fanout",
        int,
        3,
        "partial gossip: peers exchanged with per interval",
        lambda value: None if 1 <= value <= 64 else "must be in 1..64",
    ),
    Key(
        "gossip_digest_entries",
        int,
        16,
        "partial gossip: other members' reports relayed per message (the freshest held)",
        lambda value: None if 0 <= value <= 256 else "must be in 0..256",
    ),
    Key(
        "suspect_intervals",
        int,
        1,
        "partial gossip: intervals a suspect (its direct and indirect probes failed) has to "
        "send a fresher report before it is declared dead",
        lambda value: None if 1 <= value <= 100 else "must be in 1..100",
    ),
    Key(
        "forward_ack_timeout_s",
        float,
        3.0,
        "seconds a peer has to journal a forwarded task before it is dispatched again",
        _positive,
    ),
    Key(
        "cluster_size",
        int,
        0,
        "server slots in the scheduler's state; 0: this agent plus its configured peers "
        "(a larger value leaves slots for peers found by mDNS)",
        lambda value: None if value >= 0 else "must be >= 0",
    ),
    Key(
        "discovery",
        bool,
        False,
        "find peers on the local network with mDNS (_dedgeai._tcp); they fill the spare slots "
        "of `cluster_size`, and with CURVE only those whose key is authorized are used",
    ),
)


@dataclass(frozen=True)
class AgentConfig:
    endpoint: str = DEFAULT_ENDPOINT
    insecure: bool = False
    curve: bool = True
    keys_dir: str = ""
    authorized_keys_dir: str = ""
    name: str = ""
    state_dir: str = ""
    model: str = "tiny"
    device: str = ""
    vram_budget_bytes: int = 0
    placement: str = ""
    emulated_steps_per_second: float = 10.0
    max_queue: int = 256
    journal_sync: str = "normal"
    retention_max_results: int = 1000
    retention_max_age_s: float = 604800.0
    retention_max_bytes: int = 2 * 1024**3
    telemetry_interval_s: float = 1.0
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    profile_sizes: tuple[str, ...] = ("512x512",)
    profile_steps: int = 4
    shutdown_grace_s: float = 8.0
    log_level: str = "info"
    peers: tuple[str, ...] = ()
    policy: str = DEFAULT_POLICY
    probe_timeout_s: float = 0.0
    probe_targets: str = "soft-greedy"
    work_stealing: bool = False
    learn: bool = True
    policy_checkpoint: str = ""
    policy_actions: str = "sample"
    lad_actor: str = "ladn"
    lad_mode: str = "place"
    explore_epsilon: float = 0.02
    train_steps_per_s: float = 2.0
    learn_warmup: int = 300
    warm_start_steps: int = 2000
    gossip_interval_s: float = 1.0
    gossip: str = "all"
    gossip_fanout: int = 3
    gossip_digest_entries: int = 16
    suspect_intervals: int = 1
    forward_ack_timeout_s: float = 3.0
    cluster_size: int = 0
    discovery: bool = False
    source: str = "defaults"  # where it was read from (not a key)

    @property
    def display_name(self) -> str:
        return self.name or socket.gethostname()

    @property
    def profile_size_pairs(self) -> list[tuple[int, int]]:
        """``profile_sizes`` as (width, height) pairs (checked when the config was loaded)."""
        return [parse_size(size) for size in self.profile_sizes]

    def state_path(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        systemd_dirs = os.environ.get("STATE_DIRECTORY")
        if systemd_dirs:
            return Path(systemd_dirs.split(":")[0])
        return platformdirs.user_state_path(APP_NAME) / "agent"

    def as_dict(self) -> dict[str, Any]:
        out = {k.name: getattr(self, k.name) for k in KEYS}
        out["profile_sizes"] = list(self.profile_sizes)
        out["peers"] = list(self.peers)
        return out


def running_as_service() -> bool:
    return "INVOCATION_ID" in os.environ or "CONFIGURATION_DIRECTORY" in os.environ


def default_config_path() -> Path:
    """/etc/dedgeai/agent.toml under systemd, else the per-user config directory."""
    if running_as_service():
        directory = os.environ.get("CONFIGURATION_DIRECTORY", "").split(":")[0]
        return Path(directory) / "agent.toml" if directory else SERVICE_CONFIG_PATH
    return platformdirs.user_config_path(APP_NAME) / "agent.toml"


def _check_value(key: Key, value: Any) -> Any:
    ok = isinstance(value, key.type) and not (isinstance(value, bool) and key.type is not bool)
    if key.type is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(
            f"`{key.name}` must be {key.type.__name__}, got {type(value).__name__} {value!r}"
        )
    complaint = key.check(value) if key.check else None
    if complaint:
        raise ConfigError(f"`{key.name}` {complaint} (got {value!r})")
    return tuple(value) if key.type is list else value


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value; a bare word is taken as a string."""
    name, sep, raw = item.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"override {item!r} must look like key=value")
    try:
        value = tomllib.loads(f"x = {raw}")["x"]
    except tomllib.TOMLDecodeError:
        value = raw
    return name.strip(), value


def build_config(values: Mapping[str, Any], source: str = "defaults") -> AgentConfig:
    known = {k.name: k for k in KEYS}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown}; known keys: {', '.join(sorted(known))}"
        )
    try:
        checked = {name: _check_value(known[name], value) for name, value in values.items()}
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    config = replace(AgentConfig(), source=source, **checked)
    if config.lad_mode == "probe" and (config.policy != "lad" or config.lad_actor != "scorer"):
        raise ConfigError(
            f'{source}: `lad_mode = "probe"` needs `policy = "lad"` and `lad_actor = "scorer"` '
            f"(here policy = {config.policy!r}, lad_actor = {config.lad_actor!r}); pod2 alone "
            'draws its probes with soft-greedy (probe_targets = "soft-greedy")'
        )
    check_endpoint(config.endpoint, config.insecure, config.curve)
    return config


def load_config(
    path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> AgentConfig:
    """Read ``path`` (or the default path when it exists), then apply ``overrides``."""
    explicit = path is not None
    path = path if explicit else default_config_path()
    values: dict[str, Any] = {}
    source = "defaults"
    if path.exists() or explicit:
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        source = str(path)
    nested = sorted(k for k, v in values.items() if isinstance(v, dict))
    if nested:
        raise ConfigError(f"{source}: tables {nested} are not supported; keys are top-level")
    values.update(overrides or {})
    return build_config(values, source + (" + overrides" if overrides else ""))


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc:// and for TCP bound or connected to a loopback address only."""
    if endpoint.startswith("ipc://"):
        return True
    host = endpoint.removeprefix("tcp://").rpartition(":")[0]
    return endpoint.startswith("tcp://") and _is_loopback(host)


def check_endpoint(endpoint: str, insecure: bool, curve: bool = False) -> None:
    """Refuse malformed endpoints, and non-loopback TCP with neither ``curve`` nor ``insecure``.

    With ``curve`` the agent checks at start that its key pair exists (``dedgeai.agent.security.curve``).
    """
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return
    if not endpoint.startswith("tcp://"):
        raise ConfigError(f"`endpoint` must be tcp://HOST:PORT or ipc://PATH, got {endpoint!r}")
    host, sep, port = endpoint[len("tcp://") :].rpartition(":")
    if not sep or not host or not (port == "*" or (port.isdigit() and 0 < int(port) < 65536)):
        raise ConfigError(
            f"`endpoint` must be tcp://HOST:PORT (PORT 1..65535 or *), got {endpoint!r}"
        )
    if not _is_loopback(host) and not insecure and not curve:
        raise ConfigError(
            f"`endpoint` {endpoint} is reachable beyond this machine and `curve = false`; "
            "bind to 127.0.0.1, set `curve = true` (with `dedgeai keys generate`), "
            "or set `insecure = true` to accept plain TCP"
        )


def render_toml(config: AgentConfig) -> str:
    """The effective config as TOML, each key preceded by its documentation."""
    lines = [f"# dedgeai agent configuration (effective; source: {config.source})", ""]
    for key in KEYS:
        value = getattr(config, key.name)
        lines.append(f"# {key.doc} (default: {toml_value(key.default)})")
        lines.append(f"{key.name} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)
