"""The configuration file: Xen's ``key=value`` style with ``#`` comments.

Read from ``$REMUS_NETBUF_CONF`` when set (it must then exist), else from
``/etc/xen/remus-netbuf.conf`` when present, else the defaults. Unknown keys and bad values are
errors: a typo must not silently fall back to a default that changes what the netbuf does.

Teardown and gc need ``lock_dir`` alone, and must not be kept from freeing an IFB by a typo in
a key they do not use: they read the file with ``tolerate`` (see :func:`parse_config`).
"""

from __future__ import annotations

import os

from .errors import ConfigError
from .record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up: record.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    Tolerate = Callable[[ConfigError], None]  # told of each problem it lets pass

DEFAULT_PATH = "/etc/xen/remus-netbuf.conf"
PROTOCOLS = ("all", "ip")
_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off")
PLUG_LIMIT_MAX = 2**32 - 1  # the kernel's tc_plug_qopt.limit is a u32
LOCK_DIR = "lock_dir"  # the one key teardown and gc need: never tolerated


class Config(Record):
    """What the netbuf does; the defaults are what libxl's users get without a file."""

    __slots__ = ("plug_limit", "protocols", "ifb_autocreate", "lock_dir")

    def __init__(
        self,
        plug_limit: int = 10_000_000,
        protocols: str = "all",
        ifb_autocreate: bool = True,
        lock_dir: str = "/var/run/xen-hotplug",
    ) -> None:
        self.plug_limit = plug_limit
        self.protocols = protocols
        self.ifb_autocreate = ifb_autocreate
        self.lock_dir = lock_dir


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


def parse_config(text: str, source: str, tolerate: Tolerate | None = None) -> Config:
    """Parse the file's text; errors name the file and line (and both lines of a duplicate).

    With ``tolerate`` (teardown and gc, which need ``lock_dir`` alone), a problem confined to a
    line of another key (a bad value, an unknown key, a key set twice) is handed to it, its
    ``key`` field naming that key, and the line is skipped: the key keeps its default, or its
    first value. What could hide or spoil ``lock_dir`` still raises: a bad or repeated
    ``lock_dir``, and a line that is not ``key=value`` at all (its key cannot be known)."""
    values: dict[str, object] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        key, sep, rest = line.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(source=where, detail=f"expected key=value, got {_show(line)}")
        try:
            values[key] = _parse_line(key, rest, where, lines)
        except ConfigError as err:
            if tolerate is None or key == LOCK_DIR:
                raise
            tolerate(err)
        lines.setdefault(key, number)
    return Config(**values)  # type: ignore[arg-type]


def _parse_line(key: str, rest: str, where: str, lines: Mapping[str, int]) -> object:
    """The value of one ``key=rest`` line, or a ConfigError naming the line and the key."""
    if key not in _PARSERS:
        known = ", ".join(_PARSERS)
        detail = f"unknown key {_show(key)} (known: {known})"
    elif key in lines:
        detail = f"{key} is set twice (first on line {lines[key]})"
    else:
        try:
            return _PARSERS[key](_value(rest))
        except ValueError as err:
            detail = str(err)
    raise ConfigError(source=where, detail=detail, key=_show(key))


def _value(rest: str) -> str:
    """The value after ``=``: quoted (a ``#`` inside is part of it) or bare (up to a ``#``)."""
    rest = rest.strip()
    if rest[:1] in ("'", '"'):
        end = rest.find(rest[0], 1)
        if end < 0:
            raise ValueError(f"unterminated quote in {_show(rest)}")
        tail = rest[end + 1 :].strip()
        if tail and not tail.startswith("#"):
            raise ValueError(f"text after the closing quote: {_show(tail)}")
        return rest[1:end]
    return rest.split("#", 1)[0].strip()


def _show(text: str) -> str:
    """Quote file text for a message, escaping what is not printable ASCII."""
    return repr(text).encode("ascii", "backslashreplace").decode("ascii")


def load_config(environ: Mapping[str, str], tolerate: Tolerate | None = None) -> Config:
    """Find and parse the configuration the environment points at (``tolerate``: see
    :func:`parse_config`; a file that cannot be read is never tolerated).

    The file is read as bytes and decoded leniently: a stray byte in a comment is no error, and
    one in a value fails that value's check (values are ASCII), naming the line."""
    path = environ.get("REMUS_NETBUF_CONF")
    if path is None:
        if not os.path.exists(DEFAULT_PATH):
            return Config()
        path = DEFAULT_PATH
    if not path:
        raise ConfigError(source="$REMUS_NETBUF_CONF", detail="is set but empty")
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", "surrogateescape")
    except OSError as err:
        raise ConfigError(source=path, detail=f"cannot read: {err.strerror or err}") from None
    return parse_config(text, path, tolerate)


def config_problem(environ: Mapping[str, str]) -> str | None:
    """Why the configuration does not load, or None: for status and metrics, which report a
    broken config (setup would fail on it; teardown and gc too, if the problem can touch
    ``lock_dir``) instead of failing themselves."""
    try:
        load_config(environ)
    except ConfigError as err:
        return str(err)
    return None
