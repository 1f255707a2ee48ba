"""All xenstore: every read and write of the netbuf's nodes goes through this module (pyxs).

Nothing else imports pyxs. The socket is found as libxenstore finds it: ``$XENSTORED_PATH``, else
``/var/run/xenstored/socket``, else ``/dev/xen/xenbus`` (pyxs itself does not fall back). pyxs
takes 7-bit ASCII only, so values are sanitised here. pyxs's router thread waits forever for the
reply to a request whose connection dropped; our router hands every waiter an ``ECONNRESET``
instead, so a lost xenstored is a clean error, not a hang until libxl's SIGKILL. A lost
connection is reopened once per request (a transaction is then started again from the top),
which rides out a xenstored restart; a daemon that stays away is an error.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import pyxs
from pyxs._internal import Op, Packet, next_rq_id
from pyxs.helpers import error as pyxs_error

from .decide import NETBUF_ROOT, Claim
from .errors import XenstoreError, one_line
from .log import log

T = TypeVar("T")
DEFAULT_SOCKET = "/var/run/xenstored/socket"
XENBUS_DEVICE = "/dev/xen/xenbus"
TX_ATTEMPTS = 50  # EAGAIN retries of one transaction before giving up


def socket_path(environ: Mapping[str, str]) -> str:
    """Where xenstored is, in libxenstore's order of preference."""
    if environ.get("XENSTORED_PATH"):
        return environ["XENSTORED_PATH"]
    if not os.path.exists(DEFAULT_SOCKET) and os.path.exists(XENBUS_DEVICE):
        return XENBUS_DEVICE
    return DEFAULT_SOCKET


class _Router(pyxs.Router):  # type: ignore[misc]
    """pyxs's router, but a dropped connection fails every pending request instead of hanging."""

    def __call__(self) -> None:
        try:
            super().__call__()
        except Exception as err:  # the connection died: reported to the waiters below
            self.failure = err
        finally:
            for rq_id, rvar in list(self.rvars.items()):
                rvar.set(Packet(Op.ERROR, b"ECONNRESET\x00", rq_id=rq_id))


class Xenstore:
    """One connection to xenstored; use as a context manager."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._client = self._new_client()

    def _new_client(self) -> Any:
        if self.path == XENBUS_DEVICE:
            connection: Any = pyxs.connection.XenBusConnection(self.path)
        else:
            connection = pyxs.connection.UnixSocketConnection(self.path)
        return pyxs.Client(router=_Router(connection))

    def __enter__(self) -> Xenstore:
        self._connect()
        return self

    def _connect(self) -> None:
        try:
            self._client.connect()
        except (pyxs.PyXSError, OSError) as err:
            raise XenstoreError(detail=f"cannot connect to {self.path}: {_reason(err)}") from None

    def _reconnect(self) -> None:
        log.warning("xenstore: connection to %s lost; reconnecting", self.path)
        self._client.tx_id = 0
        self._client.close()
        self._client = self._new_client()
        self._connect()

    def __exit__(self, *exc: object) -> None:
        self._client.tx_id = 0  # an aborted transaction dies with the connection
        self._client.close()

    # --- plain operations -------------------------------------------------------------------

    def read(self, path: str) -> str | None:
        try:
            return self._call("read", path).decode("ascii", "replace")  # type: ignore[no-any-return]
        except _Missing:
            return None

    def write(self, path: str, value: str) -> None:
        self._call("write", path, one_line(value).encode("ascii"))

    def remove(self, path: str) -> None:
        """Remove ``path`` and its subtree; a missing node (or parent) is not an error."""
        try:
            self._call("delete", path)
        except _Missing:
            pass

    def children(self, path: str) -> list[str]:
        try:
            names = self._call("list", path)
        except _Missing:
            return []
        return [name.decode("ascii", "replace") for name in names]

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
        listed = self._call_many("list", Op.DIRECTORY, bases)
        netbufs = [
            (int(domid), int(devid), f"{base}/{devid}/ifb")
            for domid, base, children in zip(names, bases, listed, strict=True)
            for devid in _names(children)
            if _number(devid)
        ]
        values = self._call_many("read", Op.READ, [node for _, _, node in netbufs])
        return [
            Claim(domid, devid, value.decode("ascii", "replace"))
            for (domid, devid, _), value in zip(netbufs, values, strict=True)
            if value
        ]

    def backend_vifs(self, backend: str = "/local/domain/0/backend/vif") -> set[str]:
        """The names of dom0's backend vifs: each ``<domid>/<devid>``'s ``vifname`` if set,
        else libxl's ``vif<domid>.<devid>``. Three round trips, as the claim walk."""
        domids = [d for d in self.children(backend) if _number(d)]
        listed = self._call_many("list", Op.DIRECTORY, [f"{backend}/{d}" for d in domids])
        vifs = [
            (domid, devid)
            for domid, names in zip(domids, listed, strict=True)
            for devid in _names(names)
            if _number(devid)
        ]
        custom = self._call_many("read", Op.READ, [f"{backend}/{d}/{n}/vifname" for d, n in vifs])
        return {
            value.decode("ascii", "replace") if value else f"vif{d}.{n}"
            for (d, n), value in zip(vifs, custom, strict=True)
        }

    def transaction(self, body: Callable[[Xenstore], T]) -> T:
        """Run ``body`` in a transaction, again from the start whenever the commit hits EAGAIN."""
        reconnected = False
        for attempt in range(TX_ATTEMPTS):
            try:
                self._guard(self._client.transaction)
                try:
                    result = body(self)
                except BaseException:
                    self._abort()
                    raise
                if self._guard(self._client.commit):
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

    def _abort(self) -> None:
        try:
            self._client.rollback()
        except (pyxs.PyXSError, OSError):
            self._client.tx_id = 0

    def _call(self, verb: str, path: str, *args: bytes) -> Any:
        def request() -> Any:
            return getattr(self._client, verb)(path.encode("ascii"), *args)

        return self._again_if_lost(request, verb, path)

    def _call_many(self, verb: str, op: int, paths: list[str]) -> list[bytes | None]:
        """Requests of one kind for many paths, all sent before the first answer is awaited
        (xenstored answers a connection's requests in order): one round trip's wait instead of
        one per path. Each answer's payload, or None where the node does not exist."""

        if not paths:
            return []

        def request() -> list[bytes | None]:
            tx_id = self._client.tx_id
            waiting = [
                self._client.router.send(
                    Packet(op, path.encode("ascii") + b"\0", tx_id=tx_id, rq_id=next_rq_id())
                )
                for path in paths
            ]
            answers: list[bytes | None] = []
            waiting[-1].get()  # in order: once the last answer is in, so are all (one wake-up)
            for rvar in waiting:
                packet = rvar.get()
                if packet.op == Op.ERROR:
                    if packet.payload[:-1] == b"ENOENT":
                        answers.append(None)
                        continue
                    raise pyxs_error(packet.payload[:-1])
                answers.append(packet.payload.rstrip(b"\0"))
            return answers

        return self._again_if_lost(request, verb, paths[0])

    def _again_if_lost(self, request: Callable[[], T], verb: str, path: str) -> T:
        """``request``, once more on a new connection if the old one was lost (outside a
        transaction: inside one, transaction() starts the whole body again)."""
        try:
            return self._guard(request, verb, path)
        except _Lost:
            if self._client.tx_id:
                raise  # the transaction is gone; transaction() starts it again
            self._reconnect()
            return self._guard(request, verb, path)

    def _guard(self, call: Callable[[], T], verb: str = "transaction", path: str = "") -> T:
        try:
            return call()
        except pyxs.PyXSError as err:
            if err.args and err.args[0] == errno.ENOENT and verb in ("read", "delete", "list"):
                raise _Missing() from None
            where = f" {path}" if path else ""
            lost = isinstance(err, pyxs.exceptions.ConnectionError) or (
                err.args and err.args[0] == errno.ECONNRESET
            )
            error = _Lost if lost else XenstoreError
            raise error(detail=f"{verb}{where}: {_reason(err)}") from None
        except (OSError, ValueError) as err:
            raise XenstoreError(detail=f"{verb} {path}: {_reason(err)}") from None


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
    if isinstance(err.__context__, OSError) and err.__context__.strerror:
        return err.__context__.strerror  # pyxs wraps socket errors in a wordy ConnectionError
    if isinstance(err, pyxs.PyXSError) and len(err.args) == 2 and isinstance(err.args[0], int):
        code, text = err.args
        if code == errno.ECONNRESET:
            return "connection to xenstored lost"
        return f"{errno.errorcode.get(code, code)} ({text})"
    return one_line(str(err)) or type(err).__name__
