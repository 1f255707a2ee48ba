"""All xenstore: every read and write of the netbuf's nodes goes through this module.

Nothing else talks to xenstored. The socket is found as libxenstore finds it: ``$XENSTORED_PATH``,
else ``/var/run/xenstored/socket``, else ``/dev/xen/xenbus``. Values are sanitised to one line of
printable ASCII here. Errors are translated at this boundary: xenstored's errno names and lost
connections become :class:`XenstoreError`, and ENOENT, where absence is an answer, ``None`` or
nothing. A lost connection (the wire's :class:`~.xswire.Lost`: closed, failed, or out of turn) is
reopened once per request (a transaction is then started again from the top), which rides out a
xenstored restart; a daemon that stays away is an error, never a hang.

The messages themselves are :mod:`.xswire`'s. (This used pyxs until start-up mattered: importing
it and starting its router thread cost a fifth of a teardown with nothing to undo; see xswire.)
"""

from __future__ import annotations

import errno
import os
import time

from . import xswire
from .decide import NETBUF_ROOT, Claim
from .errors import XenstoreError, one_line
from .log import log
from .xswire import DIRECTORY, READ, RM, TRANSACTION_END, TRANSACTION_START, WRITE, XsError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up: record.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import TypeVar

    T = TypeVar("T")

DEFAULT_SOCKET = "/var/run/xenstored/socket"
XENBUS_DEVICE = "/dev/xen/xenbus"
TX_ATTEMPTS = 50  # EAGAIN retries of one transaction before giving up
_VERBS = {READ: "read", WRITE: "write", RM: "delete", DIRECTORY: "list"}  # for the messages


def socket_path(environ: Mapping[str, str]) -> str:
    """Where xenstored is, in libxenstore's order of preference."""
    if environ.get("XENSTORED_PATH"):
        return environ["XENSTORED_PATH"]
    if not os.path.exists(DEFAULT_SOCKET) and os.path.exists(XENBUS_DEVICE):
        return XENBUS_DEVICE
    return DEFAULT_SOCKET


class Xenstore:
    """One connection to xenstored; use as a context manager."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tx_id = 0  # the transaction every request is made in (0: none)
        self._conn: xswire.Connection | None = None

    def __enter__(self) -> Xenstore:
        self._connect()
        return self

    def _connect(self) -> None:
        try:
            self._conn = xswire.Connection(self.path)
        except OSError as err:
            raise XenstoreError(detail=f"cannot connect to {self.path}: {_reason(err)}") from None

    def _reconnect(self) -> None:
        log.warning("xenstore: connection to %s lost; reconnecting", self.path)
        self.tx_id = 0  # a transaction dies with its connection
        self._close()
        self._connect()

    def _close(self) -> None:
        """Drop the connection. It is lost, or done with: a close that fails (a socket the
        daemon already reset, xenbus's EIO) has nothing left to tell, and must not turn a
        reconnection or a finished run into a raw OSError."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def __exit__(self, *exc: object) -> None:
        self.tx_id = 0  # an aborted transaction dies with the connection
        self._close()

    # --- plain operations -------------------------------------------------------------------

    def read(self, path: str) -> str | None:
        try:
            return self._call(READ, path).decode("ascii", "replace")
        except _Missing:
            return None

    def write(self, path: str, value: str) -> None:
        self._call(WRITE, path, one_line(value).encode("ascii"))

    def remove(self, path: str) -> None:
        """Remove ``path`` and its subtree; a missing node (or parent) is not an error."""
        try:
            self._call(RM, path)
        except _Missing:
            pass

    def children(self, path: str) -> list[str]:
        try:
            return _names(self._call(DIRECTORY, path))
        except _Missing:
            return []

    # --- netbuf views -----------------------------------------------------------------------

    def live_domids(self) -> set[int]:
        """Domains listed under /local/domain, dom0 excluded."""
        return {int(d) for d in self.children("/local/domain") if _number(d) and d != "0"}

    def claims(self, domids: Iterable[int] | None = None) -> list[Claim]:
        """Every ``/libxl/<domid>/remus/netbuf/<devid>/ifb`` (of ``domids`` if given), in one
        walk of three round trips: the domains (none when given), then all their netbuf
        directories at once, then all the claims at once."""
        if domids is None:
            names = [d for d in self.children(NETBUF_ROOT) if _number(d)]
        else:
            names = [str(d) for d in domids]
        bases = [f"{NETBUF_ROOT}/{d}/remus/netbuf" for d in names]
        listed = self._call_many(DIRECTORY, bases)
        netbufs = [
            (int(domid), int(devid), f"{base}/{devid}/ifb")
            for domid, base, children in zip(names, bases, listed, strict=True)
            for devid in _names(children)
            if _number(devid)
        ]
        values = self._call_many(READ, [node for _, _, node in netbufs])
        return [
            Claim(domid, devid, value.decode("ascii", "replace"))
            for (domid, devid, _), value in zip(netbufs, values, strict=True)
            if value
        ]

    def backend_vifs(self, backend: str = "/local/domain/0/backend/vif") -> set[str]:
        """The names of dom0's backend vifs: each ``<domid>/<devid>``'s ``vifname`` if set,
        else libxl's ``vif<domid>.<devid>``. Three round trips, as the claim walk."""
        domids = [d for d in self.children(backend) if _number(d)]
        listed = self._call_many(DIRECTORY, [f"{backend}/{d}" for d in domids])
        vifs = [
            (domid, devid)
            for domid, names in zip(domids, listed, strict=True)
            for devid in _names(names)
            if _number(devid)
        ]
        custom = self._call_many(READ, [f"{backend}/{d}/{n}/vifname" for d, n in vifs])
        return {
            value.decode("ascii", "replace") if value else f"vif{d}.{n}"
            for (d, n), value in zip(vifs, custom, strict=True)
        }

    def transaction(self, body: Callable[[Xenstore], T]) -> T:
        """Run ``body`` in a transaction, again from the start whenever the commit hits EAGAIN."""
        reconnected = False
        for attempt in range(TX_ATTEMPTS):
            try:
                self._guard(self._start, "transaction")
                try:
                    result = body(self)
                except BaseException:
                    self._abort()
                    raise
                if self._guard(self._commit, "transaction"):
                    return result
            except _Lost:
                if reconnected:
                    raise
                self._reconnect()  # the transaction died with the connection: start it again
                reconnected = True
                continue
            time.sleep(min(0.001 * 2**attempt, 0.05))
        raise XenstoreError(detail=f"transaction still conflicting after {TX_ATTEMPTS} attempts")

    # --- internals --------------------------------------------------------------------------

    def _start(self) -> None:
        self.tx_id = int(self._exchange([(TRANSACTION_START, b"\0")])[0].rstrip(b"\0"))

    def _commit(self) -> bool:
        """End the transaction; False when xenstored refuses it with EAGAIN (someone else
        changed what it read or wrote: run it again)."""
        try:
            self._exchange([(TRANSACTION_END, b"T\0")])
        except XsError as err:
            if err.errno == errno.EAGAIN:
                return False
            raise
        finally:
            self.tx_id = 0
        return True

    def _abort(self) -> None:
        try:
            self._exchange([(TRANSACTION_END, b"F\0")])
        except OSError:
            pass  # the body's own exception is the one to report; the transaction is over
        self.tx_id = 0

    def _exchange(self, requests: list[xswire.Request]) -> list[bytes]:
        """Requests in the current transaction; their payloads, or the first XsError."""
        if self._conn is None:
            raise xswire.Lost()
        payloads = []
        for answer in self._conn.exchange(requests, self.tx_id):
            if isinstance(answer, XsError):
                raise answer
            payloads.append(answer)
        return payloads

    def _call(self, op: int, path: str, value: bytes = b"") -> bytes:
        payload = _path(path) + value

        def request() -> bytes:
            return self._exchange([(op, payload)])[0].rstrip(b"\0")

        return self._again_if_lost(request, _VERBS[op], path)

    def _call_many(self, op: int, paths: list[str]) -> list[bytes | None]:
        """Requests of one kind for many paths, all sent before the first answer is awaited:
        one round trip's wait instead of one per path. Each answer's payload, or None where
        the node does not exist."""

        if not paths:
            return []
        requests = [(op, _path(path)) for path in paths]

        def request() -> list[bytes | None]:
            if self._conn is None:
                raise xswire.Lost()
            answers: list[bytes | None] = []
            for answer in self._conn.exchange(requests, self.tx_id):
                if isinstance(answer, XsError):
                    if answer.errno != errno.ENOENT:
                        raise answer
                    answers.append(None)
                else:
                    answers.append(answer.rstrip(b"\0"))
            return answers

        return self._again_if_lost(request, _VERBS[op], paths[0])

    def _again_if_lost(self, request: Callable[[], T], verb: str, path: str) -> T:
        """``request``, once more on a new connection if the old one was lost (outside a
        transaction: inside one, transaction() starts the whole body again)."""
        try:
            return self._guard(request, verb, path)
        except _Lost:
            if self.tx_id:
                raise  # the transaction is gone; transaction() starts it again
            self._reconnect()
            return self._guard(request, verb, path)

    def _guard(self, call: Callable[[], T], verb: str, path: str = "") -> T:
        """``call``, its errors translated: ENOENT where absence is an answer, a lost
        connection, or any other failure as XenstoreError naming verb and path."""
        where = f" {path}" if path else ""
        try:
            return call()
        except XsError as err:
            if err.errno == errno.ENOENT and verb in ("read", "delete", "list"):
                raise _Missing() from None
            raise XenstoreError(detail=f"{verb}{where}: {err.name} ({err.strerror})") from None
        except xswire.Lost as err:
            raise _Lost(detail=f"{verb}{where}: {err.strerror}") from None
        except (OSError, ValueError) as err:
            raise XenstoreError(detail=f"{verb}{where}: {_reason(err)}") from None


def _path(path: str) -> bytes:
    """A path as the wire carries it; a NUL inside would split it into two arguments."""
    if "\0" in path:
        raise XenstoreError(detail=f"bad path {path!r}")
    try:
        return path.encode("ascii") + b"\0"
    except UnicodeEncodeError:
        raise XenstoreError(detail=f"bad path {path!r}") from None


def _names(payload: bytes | None) -> list[str]:
    """The child names of a DIRECTORY answer (None: the directory does not exist)."""
    return [n.decode("ascii", "replace") for n in payload.split(b"\0") if n] if payload else []


def _number(name: str) -> bool:
    return name.isascii() and name.isdigit()


class _Missing(Exception):
    """ENOENT from xenstored, for the operations where absence is an answer."""


class _Lost(XenstoreError):
    """The connection to xenstored broke: worth one reconnection."""


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return one_line(str(err)) or type(err).__name__
