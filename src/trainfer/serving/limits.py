"""The server's limits and timeouts, checked before anything starts: one table, one check, one message each.

A limit of 0 (or NaN, or a day) is accepted by the option parser and then breaks every request
(``--max-body-mb 0`` refused every POST): every value must lie in its sane range, and the CLI and
``trainfer.serve`` give the same ``error:`` for one that does not. The port is tried the same way:
a busy port is one clear line here rather than uvicorn's log lines and exit 3.
"""

from __future__ import annotations

import errno
import math
import socket
from typing import NamedTuple

from trainfer.errors import ConfigError


class Limit(NamedTuple):
    low: float  # exclusive when ``open_low``
    high: float
    integer: bool
    unit: str
    open_low: bool = True


# option -> range. Upper bounds are far beyond any sane setting, low enough to catch a unit mistake.
LIMITS: dict[str, Limit] = {
    "max_batch_size": Limit(0, 1 << 20, True, "rows"),
    "max_delay_ms": Limit(0, 10_000, False, "ms", open_low=False),
    "max_queue": Limit(0, 1 << 20, True, "requests"),
    # lows: a value that passes every request's check yet fails every request is no limit (1e-9 MB
    # answered every POST 413, 0.001 ms every request 504)
    "timeout_ms": Limit(1, 3_600_000, False, "ms", open_low=False),
    "max_body_mb": Limit(0.001, 4096, False, "MB", open_low=False),
    "header_timeout_s": Limit(0.1, 3600, False, "s", open_low=False),
    "body_timeout_s": Limit(0.1, 3600, False, "s", open_low=False),
    "keep_alive_s": Limit(0.1, 3600, False, "s", open_low=False),
    "workers": Limit(0, 256, True, "processes"),
    "threads": Limit(0, 1024, True, "threads"),
    "port": Limit(1, 65535, True, "", open_low=False),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_limits(**values: float | int | None) -> None:
    """Raise ConfigError naming every value outside its range (None means "the default")."""
    problems = []
    for name, value in values.items():
        lim = LIMITS[name]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{_flag(name)} must be a number, not {value!r}")
            continue
        low_ok = value > lim.low if lim.open_low else value >= lim.low
        if not (math.isfinite(value) and low_ok and value <= lim.high) or (lim.integer and value != int(value)):
            kind = "an integer" if lim.integer else "a number"
            low = f"above {lim.low:g}" if lim.open_low else f"at least {lim.low:g}"
            high = f"{lim.high:,.0f}" if lim.high >= 1e5 else f"{lim.high:g}"  # not "1.04858e+06 rows"
            problems.append(f"{_flag(name)} must be {kind} {low} and at most {high}"
                            f"{' ' + lim.unit if lim.unit else ''}, not {value:g}")
    if problems:
        raise ConfigError("; ".join(problems), hint="the defaults in `trainfer serve --help` suit most servers")


def check_port(host: str, port: int) -> None:
    """Bind ``host:port`` once and let go, so a busy or forbidden port is one clear error before start-up.

    Every address ``host`` resolves to, as asyncio's create_server (uvicorn's) binds them, with
    SO_REUSEADDR as it does: a port held only by connections in TIME_WAIT is free for both."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on host {host!r}: {exc.strerror}",
                          hint="use --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)") from None
    for family, kind, proto, _, address in dict.fromkeys(infos):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise _bind_error(exc, host, port) from None


def _bind_error(exc: OSError, host: str, port: int) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        other = port + 1 if port < 65535 else 8000
        return ConfigError(f"port {port} on {host} is already in use by another process",
                           hint=f"choose another with --port (e.g. --port {other}), or stop the process that holds it")
    if exc.errno == errno.EACCES:
        return ConfigError(f"no permission to listen on port {port}",
                           hint="ports below 1024 need privileges: choose --port 1024 or above")
    return ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}",
                       hint="check --host (an address of this machine) and --port")
