"""What libxl asked for: the command, ``vifname``, ``XENBUS_PATH`` and ``REMUS_IFB``.

libxl runs ``remus-netbuf-setup setup|teardown`` with the names in the environment; Xen's shell
scripts also accept ``name=value`` arguments that override it (``evalVariables``). Here they are
parsed, never evaluated, and only the three names the contract defines are accepted. Everything is
validated before anything is touched, by exact checks written out rather than regular
expressions: ``re`` (with ``enum``) was ~6 ms of a teardown with nothing to undo (issue 11).
"""

from __future__ import annotations

from .errors import BadRequest
from .record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up: record.py)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

COMMANDS = ("setup", "teardown")
VARIABLES = ("vifname", "XENBUS_PATH", "REMUS_IFB")
IFNAMSIZ = 16  # the kernel's limit, NUL included: names are at most 15 bytes
_IFNAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
DOMID_FIRST_RESERVED = 0x7FF0  # xen/include/public/xen.h: domids at or above are not guests


class Request(Record):
    """A validated hotplug request."""

    __slots__ = ("command", "vif", "xenbus_path", "remus_ifb")

    def __init__(self, command: str, vif: str, xenbus_path: str, remus_ifb: str | None) -> None:
        self.command = command
        self.vif = vif
        self.xenbus_path = xenbus_path
        self.remus_ifb = remus_ifb

    @property
    def domid(self) -> int:
        return xenbus_ids(self.xenbus_path)[0]

    @property
    def devid(self) -> int:
        return xenbus_ids(self.xenbus_path)[1]


def check_ifname(value: str, what: str) -> str:
    """Return ``value`` if it is an interface name we accept, else raise BadRequest.

    Stricter than the kernel (which allows any byte but ``/``, ``:`` and white space): the
    netbuf names come from libxl (``vifD.N``, ``ifbN``) or a guest config's ``vifname=``, and a
    name with shell metacharacters or non-ASCII is far more likely an attack than a vif.
    """
    if not value:
        raise BadRequest(detail=f"{what} is empty")
    if not _IFNAME_CHARS.issuperset(value) or value in (".", ".."):
        raise BadRequest(
            detail=f"{what} {_show(value)} is not an interface name (letters, digits, '_.-')"
        )
    if len(value.encode()) >= IFNAMSIZ:
        raise BadRequest(detail=f"{what} {_show(value)} is longer than {IFNAMSIZ - 1} bytes")
    return value


def xenbus_ids(path: str) -> tuple[int, int]:
    """Return (domid, devid) of a ``/libxl/<domid>/remus/netbuf/<devid>`` path, or raise.

    Exactly that path: the domid a guest's (1 to 32751) and the devid at most 9 digits, each
    a decimal number as libxl writes it (no sign, no space, no leading zero)."""
    parts = path.split("/")  # "", "libxl", domid, "remus", "netbuf", devid
    if (
        len(parts) == 6
        and parts[:2] == ["", "libxl"]
        and parts[3:5] == ["remus", "netbuf"]
        and _decimal(parts[2], 5)
        and _decimal(parts[5], 9)
        and 0 < int(parts[2]) < DOMID_FIRST_RESERVED
    ):
        return int(parts[2]), int(parts[5])
    raise BadRequest(detail=f"XENBUS_PATH {_show(path)} is not /libxl/<domid>/remus/netbuf/<devid>")


def _decimal(text: str, digits: int) -> bool:
    """Whether ``text`` is a number of at most ``digits`` ASCII digits without a leading zero
    (0 itself aside)."""
    return (
        text.isascii()
        and text.isdigit()
        and len(text) <= digits
        and (text == "0" or not text.startswith("0"))
    )


def valid_xenbus_path(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The XENBUS_PATH in force if it is valid, else None: where hotplug-error may be written.

    Read leniently, past any other bad word, so that an invocation rejected for an unknown
    argument still reports to its own netbuf."""
    path = environ.get("XENBUS_PATH")
    for word in argv[1:]:
        name, sep, value = word.partition("=")
        if sep and name == "XENBUS_PATH":
            path = value
    try:
        if path is not None:
            xenbus_ids(path)
        return path
    except BadRequest:
        return None


def parse_request(argv: Sequence[str], environ: Mapping[str, str]) -> Request:
    """Validate ``argv`` (command then ``name=value`` words) over ``environ``."""
    if not argv or argv[0] not in COMMANDS:
        given = _show(argv[0]) if argv else "nothing"
        raise BadRequest(detail=f"command must be setup or teardown, got {given}")
    values = _variables(argv, environ)
    for name in ("vifname", "XENBUS_PATH"):
        if name not in values:
            raise BadRequest(detail=f"{name} is not set")
    xenbus_ids(values["XENBUS_PATH"])
    vif = check_ifname(values["vifname"], "vifname")
    remus_ifb = values.get("REMUS_IFB") or None
    if remus_ifb is not None:
        check_ifname(remus_ifb, "REMUS_IFB")
    return Request(argv[0], vif, values["XENBUS_PATH"], remus_ifb)


def _variables(argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    values = {name: environ[name] for name in VARIABLES if name in environ}
    for word in argv[1:]:
        name, sep, value = word.partition("=")
        if not sep:
            raise BadRequest(detail=f"unexpected argument {_show(word)} (want name=value)")
        if name not in VARIABLES:
            raise BadRequest(
                detail=f"unknown variable {_show(name)} (accepted: {', '.join(VARIABLES)})"
            )
        values[name] = value
    return values


def _show(value: str) -> str:
    """Quote untrusted text for a one-line message, escaping anything unprintable."""
    clipped = value if len(value) <= 40 else value[:40] + "..."
    return repr(clipped).encode("ascii", "backslashreplace").decode("ascii")
