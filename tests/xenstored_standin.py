"""A stand-in xenstored for tests: the real xenstore wire protocol over a Unix socket, in memory.

No hypervisor here, so no real xenstored. This one answers libxenstore (Debian's xenstore-*
tools), pyxs and our product as C xenstored 4.17 does (tools/xenstore/xenstored_core.c): replies
echo the request header, errors are names like ``ENOENT``, WRITE and MKDIR create missing parents,
RM takes the subtree, new nodes inherit their parent's perms, WATCH fires once up front. A
transaction works on a snapshot and fails with EAGAIN at commit if a node it read, listed or wrote
changed since it started (per-node generations; a new or removed child changes its parent, as in
xenstored). Every client is dom0: privileged, relative paths under /local/domain/0. Tests inject
faults with ``eagain_commits`` and ``drop_after_requests``. Stdlib only; run it alone with
``python tests/xenstored_standin.py --socket PATH``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import signal
import socket
import stat
import string
import struct
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

HEADER = struct.Struct("<IIII")  # type, req_id, tx_id, len: struct xsd_sockmsg in xs_wire.h
PAYLOAD_MAX = 4096  # XENSTORE_PAYLOAD_MAX
OPS = dict(
    enumerate(
        "CONTROL DIRECTORY READ GET_PERMS WATCH UNWATCH TRANSACTION_START TRANSACTION_END INTRODUCE"
        " RELEASE GET_DOMAIN_PATH WRITE MKDIR RM SET_PERMS WATCH_EVENT ERROR IS_DOMAIN_INTRODUCED"
        " RESUME SET_TARGET #20 RESET_WATCHES DIRECTORY_PART".split()
    )
)  # 20 was RESTRICT, removed
WATCH_EVENT, ERROR = 15, 16
PATH_OPS = {
    "DIRECTORY",
    "READ",
    "GET_PERMS",
    "WATCH",
    "UNWATCH",
    "WRITE",
    "MKDIR",
    "RM",
    "SET_PERMS",
    "DIRECTORY_PART",
}
TREE_OPS = PATH_OPS - {"WATCH", "UNWATCH"} | {"GET_DOMAIN_PATH", "IS_DOMAIN_INTRODUCED"}
HOME = "/local/domain/0"  # where dom0's relative paths point
NODE_CHARS = frozenset(string.ascii_letters + string.digits + "-/_@")
PERM = re.compile(r"([nrwb])(\d+)")
SEED = {  # what xenstored itself (/tool/xenstored) and xen-init-dom0 (name, domid) make
    "/local/domain/0/name": "Domain-0",
    "/local/domain/0/domid": "0",
    "/tool/xenstored": "",
}


class Node(NamedTuple):
    value: bytes
    perms: tuple[str, ...]
    gen: int  # a new one whenever the node, or its list of children, changes


class XsError(Exception):
    """An error reply; the argument is the errno name xenstored sends, e.g. ``ENOENT``."""


@dataclass(frozen=True)
class Watch:
    path: str  # canonical, or an @special
    token: str
    relative: bool = field(compare=False)  # then events name paths relative to HOME

    def fires_for(self, path: str, exact: bool) -> bool:
        return path == self.path or (not exact and _is_under(path, self.path))

    def event(self, path: str) -> bytes:
        if self.relative and path.startswith(HOME + "/"):
            path = path[len(HOME) + 1 :]
        body = f"{path}\0{self.token}\0".encode("latin-1")
        return HEADER.pack(WATCH_EVENT, 0, 0, len(body)) + body  # req_id 0, as xenstored's


@dataclass
class Tree:
    """The nodes one request, or a whole transaction, works on, and what it saw and changed."""

    nodes: dict[str, Node]  # the live tree, or a transaction's private copy
    base: dict[str, Node] = field(default_factory=dict)  # a transaction's tree at its start
    accessed: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)
    events: list[tuple[str, bool]] = field(default_factory=list)  # (path, exact watches only)

    def get(self, raw: str) -> tuple[str, Node]:
        path = _node_path(raw)
        self.accessed.add(path)
        if path not in self.nodes:
            raise XsError("ENOENT")
        return path, self.nodes[path]

    def children(self, path: str) -> bytes:
        """Each child's name NUL-terminated, oldest first as in xenstored."""
        prefix = path.rstrip("/") + "/"
        names = [p[len(prefix) :] for p in self.nodes if p.startswith(prefix) and p != "/"]
        return "".join(f"{name}\0" for name in names if "/" not in name).encode("latin-1")

    def write(self, path: str, value: bytes) -> None:
        if path not in self.nodes:  # create it and any missing parents, inheriting perms
            missing = [path]
            while _parent(missing[-1]) not in self.nodes:
                missing.append(_parent(missing[-1]))
            existing = _parent(missing[-1])
            self.written.add(existing)  # its children change
            for new in reversed(missing):
                self.nodes[new] = Node(b"", self.nodes[existing].perms, 0)
                self.written.add(new)  # so a transaction's commit creates the parents too
        self.nodes[path] = self.nodes[path]._replace(value=value)
        self.written.add(path)
        self.events.append((path, False))

    def remove(self, path: str) -> None:
        doomed = [p for p in self.nodes if _is_under(p, path)]
        for gone in reversed(doomed):  # children first, as xenstored walks it
            del self.nodes[gone]
            self.written.add(gone)
            self.events.append((gone, gone != path))  # below the top: exact watches only
        if doomed:
            self.written.add(_parent(path))

    def op_read(self, payload: bytes) -> bytes:
        return self.get(_onearg(payload))[1].value

    def op_directory(self, payload: bytes) -> bytes:
        body = self.children(self.get(_onearg(payload))[0])
        if len(body) > PAYLOAD_MAX:
            raise XsError("E2BIG")  # libxenstore then pages with DIRECTORY_PART
        return body

    def op_directory_part(self, payload: bytes) -> bytes:
        args = _strings(payload)
        if len(args) != 2 or not args[1].isdigit():
            raise XsError("EINVAL")
        path, node = self.get(args[0])
        body, gen = b"", f"{node.gen}\0".encode()
        for name in self.children(path)[int(args[1]) :].split(b"\0")[:-1]:
            if len(gen + body + name) + 2 > PAYLOAD_MAX:
                return gen + body  # the client asks again from its new offset
            body += name + b"\0"
        return gen + body + b"\0"  # an empty string ends the list

    def op_get_perms(self, payload: bytes) -> bytes:
        return "".join(f"{p}\0" for p in self.get(_onearg(payload))[1].perms).encode()

    def op_set_perms(self, payload: bytes) -> bytes:
        args = _strings(payload)
        perms = [PERM.fullmatch(p) for p in args[1:]]
        if not perms or not all(perms):
            raise XsError("EINVAL")
        path, node = self.get(args[0])
        self.nodes[path] = node._replace(perms=tuple(f"{m[1]}{int(m[2])}" for m in perms if m))
        self.written.add(path)
        self.events.append((path, False))
        return b"OK\0"

    def op_write(self, payload: bytes) -> bytes:
        if b"\0" not in payload:
            raise XsError("EINVAL")
        raw, value = payload.split(b"\0", 1)
        self.write(_node_path(raw.decode("latin-1")), value)
        return b"OK\0"

    def op_mkdir(self, payload: bytes) -> bytes:
        path = _node_path(_onearg(payload))
        self.accessed.add(path)
        if path not in self.nodes:
            self.write(path, b"")
        return b"OK\0"

    def op_rm(self, payload: bytes) -> bytes:
        path = _node_path(_onearg(payload))
        self.accessed |= {path, _parent(path)}
        if path == "/":
            raise XsError("EINVAL")
        if path not in self.nodes and _parent(path) not in self.nodes:
            raise XsError("ENOENT")  # a missing node is fine only if its parent exists
        self.remove(path)
        return b"OK\0"

    def op_get_domain_path(self, payload: bytes) -> bytes:
        domid = _onearg(payload)
        if not domid.isdigit():
            raise XsError("EINVAL")
        return f"/local/domain/{int(domid)}\0".encode()

    def op_is_domain_introduced(self, payload: bytes) -> bytes:
        """No INTRODUCE here: a domain counts as introduced while /local/domain/<id> exists."""
        return b"T\0" if f"/local/domain/{_onearg(payload)}" in self.nodes else b"F\0"


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.outbox: deque[bytes] = deque()  # filled under the store's lock: in order of changes
        self.send_lock = threading.Lock()
        self.watches: list[Watch] = []
        self.transactions: dict[int, Tree] = {}

    def flush(self) -> None:
        """Send what is queued; any thread may, the order stays that of the queue."""
        with self.send_lock, contextlib.suppress(OSError):
            while self.outbox:
                self.sock.sendall(self.outbox.popleft())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def watch(self, add: bool, payload: bytes) -> tuple[bytes, list[bytes]]:
        args = _strings(payload)
        if len(args) != 2:
            raise XsError("EINVAL")
        raw, token = args
        if not add:  # xenstored's do_unwatch() does not check the path: a bad one is just unknown
            watch = Watch(raw if raw[:1] in "/@" else f"{HOME}/{raw}", token, raw[:1] not in "/@")
            if watch not in self.watches:
                raise XsError("ENOENT")
            self.watches.remove(watch)
            return b"OK\0", []
        watch = Watch(raw if raw[:1] == "@" else _node_path(raw), token, raw[:1] not in "/@")
        if watch in self.watches:
            raise XsError("EEXIST")
        self.watches.append(watch)
        return b"OK\0", [watch.event(watch.path)]  # xenstored fires once, after the ack


class XenstoredStandin:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.eagain_commits = 0
        self.drop_after_requests: int | None = None
        self.requests = 0
        self.ops_log: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._gens = itertools.count(1)
        self._tx_ids = itertools.count(1)
        self._nodes = {"/": Node(b"", ("n0",), next(self._gens))}
        self._conns: list[Connection] = []
        self._listener: socket.socket | None = None
        for path, value in SEED.items():
            self.seed(path, value)

    def start(self) -> XenstoredStandin:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(self.socket_path).st_mode):
                os.unlink(self.socket_path)  # stale, from a killed run
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.socket_path)
        self._listener.listen(64)
        threading.Thread(target=self._accept_loop, args=(self._listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
        for conn in conns:
            conn.close()

    def __enter__(self) -> XenstoredStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def nodes(self) -> dict[str, str]:
        with self._lock:
            return {path: node.value.decode("latin-1") for path, node in self._nodes.items()}

    def seed(self, path: str, value: str = "") -> None:
        """Write as another toolstack process would: no transaction, watches fire."""
        with self._lock:
            tree = Tree(self._nodes)
            tree.write(_node_path(path), value.encode("latin-1"))
            self._publish(tree)
        self._flush()

    def remove(self, path: str) -> None:
        with self._lock:
            tree = Tree(self._nodes)
            tree.remove(_node_path(path))
            self._publish(tree)
        self._flush()

    def _accept_loop(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn = Connection(listener.accept()[0])
                with self._lock:
                    if self._listener is None:  # stop() ran meanwhile
                        conn.close()
                        return
                    self._conns.append(conn)
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        with contextlib.suppress(OSError), conn.sock.makefile("rb") as stream:
            while len(header := stream.read(HEADER.size)) == HEADER.size:
                op, req_id, tx_id, length = HEADER.unpack(header)
                payload = stream.read(length) if length <= PAYLOAD_MAX else b""
                if len(payload) != length or not self._handle(conn, op, req_id, tx_id, payload):
                    break
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        conn.close()  # its watches and transactions go with it

    def _handle(self, conn: Connection, op: int, req_id: int, tx_id: int, payload: bytes) -> bool:
        """Answer one request; False if the fault injection says to drop the connection."""
        name = OPS.get(op, f"#{op}")
        with self._lock:
            if self.drop_after_requests is not None:
                if self.drop_after_requests <= 0:
                    self.drop_after_requests = None
                    return False
                self.drop_after_requests -= 1
            self.requests += 1
            self.ops_log.append((name, _strings(payload + b"\0")[0] if name in PATH_OPS else ""))
            try:
                reply, (body, after) = op, self._dispatch(conn, name, tx_id, payload)
            except XsError as err:
                reply, body, after = ERROR, f"{err.args[0]}\0".encode(), []
            conn.outbox.extend([HEADER.pack(reply, req_id, tx_id, len(body)) + body, *after])
        self._flush()
        return True

    def _dispatch(
        self, conn: Connection, name: str, tx_id: int, payload: bytes
    ) -> tuple[bytes, list[bytes]]:
        """The reply's payload, and any frames for this client to follow it."""
        if name in ("WATCH", "UNWATCH"):  # these ignore tx_id (XS_FLAG_NOTID)
            return conn.watch(name == "WATCH", payload)
        tx = conn.transactions.get(tx_id) if tx_id else None
        if tx_id and tx is None:
            raise XsError("ENOENT")
        if name in TREE_OPS:
            tree = tx if tx is not None else Tree(self._nodes)
            body = getattr(tree, "op_" + name.lower())(payload)
            if tx is None:  # a transaction's changes and events wait for its commit
                self._publish(tree)
            return body, []
        if name == "TRANSACTION_START":
            if tx is not None:
                raise XsError("EBUSY")
            new_id = next(self._tx_ids)
            conn.transactions[new_id] = Tree(dict(self._nodes), base=dict(self._nodes))
            return f"{new_id}\0".encode(), []
        if name == "TRANSACTION_END":
            return self._end_transaction(conn, tx_id, _onearg(payload))
        if name == "RESET_WATCHES":
            conn.watches.clear()
            conn.transactions.clear()
            return b"OK\0", []
        if name in ("CONTROL", "INTRODUCE", "RELEASE", "RESUME", "SET_TARGET"):
            raise XsError("EINVAL")  # real ones, but they need a hypervisor
        raise XsError("ENOSYS")  # what xenstored answers to an unknown type

    def _end_transaction(self, conn: Connection, tx_id: int, arg: str) -> tuple[bytes, list[bytes]]:
        if arg not in ("T", "F"):
            raise XsError("EINVAL")
        tx = conn.transactions.pop(tx_id, None)
        if tx is None:
            raise XsError("ENOENT")
        if arg == "F":
            return b"OK\0", []
        if self.eagain_commits > 0:
            self.eagain_commits -= 1
            raise XsError("EAGAIN")
        if any(_gen(tx.base, p) != _gen(self._nodes, p) for p in tx.accessed | tx.written):
            raise XsError("EAGAIN")  # someone else changed what this transaction saw
        for path, node in tx.nodes.items():  # in order: new children keep their order
            if path in tx.written:
                self._nodes[path] = node
        for path in tx.written - tx.nodes.keys():
            self._nodes.pop(path, None)
        self._publish(tx)
        return b"OK\0", []

    def _publish(self, tree: Tree) -> None:
        """Give the changed nodes new generations and queue the watch events, as xenstored does
        before its reply: under the lock, so every client gets them in the order of changes."""
        for path in tree.written & self._nodes.keys():
            self._nodes[path] = self._nodes[path]._replace(gen=next(self._gens))
        for path, exact in tree.events:
            for conn in self._conns:
                conn.outbox.extend(w.event(path) for w in conn.watches if w.fires_for(path, exact))

    def _flush(self) -> None:
        with self._lock:
            waiting = [conn for conn in self._conns if conn.outbox]
        for conn in waiting:
            conn.flush()


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _is_under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _gen(nodes: dict[str, Node], path: str) -> int | None:
    return nodes[path].gen if path in nodes else None


def _node_path(raw: str) -> str:
    """The canonical node path, or EINVAL as xenstored's is_valid_nodename() decides."""
    path = raw if raw.startswith(("/", "@")) else f"{HOME}/{raw}"
    if (
        not path.startswith("/")
        or (path.endswith("/") and path != "/")
        or "//" in path
        or len(path) > 3072
        or not set(path) <= NODE_CHARS
    ):
        raise XsError("EINVAL")
    return path


def _strings(payload: bytes) -> list[str]:
    """The NUL-terminated strings in a payload; anything after the last NUL is ignored."""
    return payload.decode("latin-1").split("\0")[:-1]


def _onearg(payload: bytes) -> str:
    if not payload or payload.find(b"\0") != len(payload) - 1:
        raise XsError("EINVAL")
    return payload[:-1].decode("latin-1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stand-in xenstored for tests and the demo.")
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    args = parser.parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # the serving threads inherit this
    standin = XenstoredStandin(args.socket).start()
    print(f"ready {args.socket}", flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
