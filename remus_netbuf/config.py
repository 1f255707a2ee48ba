"""The configuration file: Xen's ``key=value`` style with ``#`` comments.

Read from ``$REMUS_NETBUF_CONF`` when set (it must then exist), else from
``/etc/xen/remus-netbuf.conf`` when present, else the defaults. Unknown keys and bad values are
errors: a typo must not silently fall back to a default that changes what the netbuf does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

from .errors import ConfigError

DEFAULT_PATH = "/etc/xen/remus-netbuf.conf"
PROTOCOLS = ("all", "ip")
_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off")
PLUG_LIMIT_MAX = 2**32 - 1  # the kernel's tc_plug_qopt.limit is a u32


class Config(NamedTuple):
    """What the netbuf does; the defaults are what libxl's users get without a file."""

    plug_limit: int = 10_000_000
    protocols: str = "all"
    ifb_autocreate: bool = True
    lock_dir: str = "/var/run/xen-hotplug"


def _plug_limit(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) <= PLUG_LIMIT_MAX:
        raise ValueError(f"plug_limit must be bytes, 1..{PLUG_LIMIT_MAX}, not {value!r}")
    return int(value)


def _protocols(value: str) -> str:
    if value not in PROTOCOLS:
        raise ValueError(f"protocols must be one of {', '.join(PROTOCOLS)}, not {value!r}")
    return value


def _boolean(value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"ifb_autocreate must be yes or no, not {value!r}")


def _lock_dir(value: str) -> str:
    if not value.startswith("/") or not value.isascii() or any(c.isspace() for c in value):
        raise ValueError(f"lock_dir must be an absolute path, not {value!r}")
    return value


_PARSERS = {
    "plug_limit": _plug_limit,
    "protocols": _protocols,
    "ifb_autocreate": _boolean,
    "lock_dir": _lock_dir,
}


def parse_config(text: str, source: str) -> Config:
    """Parse the file's text; errors name the file and line."""
    values: dict[str, object] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), _unquote(value.split("#", 1)[0].strip())
        where = f"{source}:{number}"
        if not sep:
            raise ConfigError(source=where, detail=f"expected key=value, got {line!r}")
        if key not in _PARSERS:
            known = ", ".join(_PARSERS)
            raise ConfigError(source=where, detail=f"unknown key {key!r} (known: {known})")
        try:
            values[key] = _PARSERS[key](value)
        except ValueError as err:
            raise ConfigError(source=where, detail=str(err)) from None
    return Config(**values)  # type: ignore[arg-type]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def load_config(environ: Mapping[str, str]) -> Config:
    """Find and parse the configuration the environment points at."""
    path = environ.get("REMUS_NETBUF_CONF")
    if path is None:
        if not os.path.exists(DEFAULT_PATH):
            return Config()
        path = DEFAULT_PATH
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(source=path, detail=f"cannot read: {err}") from None
    return parse_config(text, path)
