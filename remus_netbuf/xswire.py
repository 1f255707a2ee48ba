"""The xenstore wire protocol (Xen's xs_wire.h): one connection to xenstored, its requests and
their answers.

Stdlib only, and on purpose, as :mod:`.rtnl` for netlink: importing pyxs, with the threading,
queue, copy and platform modules it loads and the router thread it starts, took a fifth of a
teardown with nothing to undo (issue 11). The netbuf needs five requests (read, write, rm,
directory, transactions), each a 16-byte header (``<IIII``: type, req_id, tx_id, len) and
NUL-separated strings; xenstored answers with the request's type, or ``ERROR`` and an errno name.

The connection is found as libxenstore's ``get_handle`` does it: a character device
(``/dev/xen/xenbus``) is opened and written one message per ``write``, as the kernel's xenbus
driver wants; anything else is a unix socket. Requests may be pipelined: all are sent before the
first answer is read, and answers are matched to requests by req_id. A connection that closes,
fails, or answers out of turn is :class:`Lost`, never a hang: there is no thread to wait on.
"""

from __future__ import annotations

import _socket  # the C module alone: socket.py adds enum and selectors (~3 ms), nothing we use
import errno
import os
import stat
import struct

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up: record.py)
if TYPE_CHECKING:
    from collections.abc import Sequence

HEADER = struct.Struct("<IIII")  # struct xsd_sockmsg: type, req_id, tx_id, len
DIRECTORY, READ, TRANSACTION_START, TRANSACTION_END = 1, 2, 6, 7
WRITE, RM, WATCH_EVENT, ERROR = 11, 13, 15, 16
PAYLOAD_MAX = 4096  # XENSTORE_PAYLOAD_MAX: xenstored refuses a longer message
RECV_SIZE = 65536

Request = tuple[int, bytes]  # message type, payload


class XsError(OSError):
    """xenstored's ``ERROR`` answer: the errno its name stands for (EINVAL for a name this
    Python does not know, as libxenstore does), and the name as xenstored sent it."""

    def __init__(self, name: str) -> None:
        self.name = name
        code = getattr(errno, name, errno.EINVAL) if name.startswith("E") else errno.EINVAL
        super().__init__(code, os.strerror(code))


class Lost(OSError):
    """The connection broke, or answered what was not asked: no later answer can be trusted."""

    def __init__(self, detail: str = "connection to xenstored lost") -> None:
        super().__init__(errno.ECONNRESET, detail)


class Connection:
    """One connection to xenstored (a socket, or the xenbus device); opened by the constructor,
    whose OSError is the reason it could not be."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: _socket.socket | None = None
        self._fd = -1
        self._buffer = bytearray()
        self._next_id = 0
        try:
            device = stat.S_ISCHR(os.stat(path).st_mode)
        except OSError:
            device = False  # connect() says why, as it would for a socket
        if device:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            return
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)  # close-on-exec, as all here
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def close(self) -> None:
        sock, fd, self._sock, self._fd = self._sock, self._fd, None, -1
        if sock is not None:
            sock.close()
        if fd >= 0:
            os.close(fd)

    def exchange(self, requests: Sequence[Request], tx_id: int = 0) -> list[bytes | XsError]:
        """Send every request, then read their answers: each one's payload (its trailing NUL
        included), or its :class:`XsError`, in the order of ``requests``."""
        messages, wanted = [], {}
        for i, (op, payload) in enumerate(requests):
            if len(payload) > PAYLOAD_MAX:
                raise XsError("E2BIG")
            req_id, self._next_id = self._next_id, (self._next_id + 1) & 0xFFFFFFFF
            messages.append(HEADER.pack(op, req_id, tx_id, len(payload)) + payload)
            wanted[req_id] = (i, op)
        answers: dict[int, bytes | XsError] = {}
        try:
            self._send(messages)
            while wanted:
                op, req_id, _, length = HEADER.unpack(self._read(HEADER.size))
                payload = self._read(length)
                if op == WATCH_EVENT:
                    continue  # a watch of this connection fired (we set none): not an answer
                if req_id not in wanted or op not in (wanted[req_id][1], ERROR):
                    raise Lost(f"xenstored answered out of turn (type {op}, req_id {req_id})")
                i = wanted.pop(req_id)[0]
                name = payload.rstrip(b"\0").decode("ascii", "replace")
                answers[i] = XsError(name) if op == ERROR else payload
        except Lost:
            raise
        except OSError as err:
            raise Lost(f"connection to xenstored lost ({err.strerror or err})") from None
        return [answers[i] for i in range(len(messages))]

    def _send(self, messages: list[bytes]) -> None:
        if self._sock is not None:
            self._sock.sendall(b"".join(messages))
            return
        if self._fd < 0:
            raise Lost()
        for message in messages:  # the xenbus driver takes one message per write
            view = memoryview(message)
            while view:
                view = view[os.write(self._fd, view) :]

    def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if self._sock is not None:
                chunk = self._sock.recv(RECV_SIZE)
            elif self._fd >= 0:
                chunk = os.read(self._fd, RECV_SIZE)
            else:
                raise Lost()
            if not chunk:
                raise Lost()
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data
