"""The xenstore wire client (xswire) against the stand-in xenstored, Debian's C clients
(libxenstore) as independent observers, and a scripted daemon for what a sane one never sends."""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from remus_netbuf.xswire import (
    DIRECTORY,
    ERROR,
    HEADER,
    PAYLOAD_MAX,
    READ,
    RM,
    TRANSACTION_END,
    TRANSACTION_START,
    WATCH_EVENT,
    WRITE,
    Connection,
    Lost,
    XsError,
)
from tests.xenstored_standin import XenstoredStandin

WATCH = 4
needs_c_clients = pytest.mark.skipif(
    not (shutil.which("xenstore-read") and shutil.which("xenstore-write")),
    reason="Debian's xenstore-utils (the libxenstore C clients) are not installed",
)


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[XenstoredStandin]:
    path = str(tmp_path / "xs.sock")
    monkeypatch.setenv("XENSTORED_PATH", path)  # for the C clients
    with XenstoredStandin(path) as server:
        yield server


@pytest.fixture
def conn(standin: XenstoredStandin) -> Iterator[Connection]:
    c = Connection(standin.socket_path)
    yield c
    c.close()


def c_client(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10)


def test_write_read_directory_rm(conn: Connection, standin: XenstoredStandin) -> None:
    assert conn.exchange([(WRITE, b"/a/b\0v 1")]) == [b"OK\0"]
    assert conn.exchange([(READ, b"/a/b\0")]) == [b"v 1"]
    assert conn.exchange([(DIRECTORY, b"/a\0")]) == [b"b\0"]
    assert conn.exchange([(RM, b"/a\0")]) == [b"OK\0"]
    assert "/a/b" not in standin.nodes()


def test_errors_carry_the_errno_and_xenstoreds_name(conn: Connection) -> None:
    missing, bad = conn.exchange([(READ, b"/nope\0"), (READ, b"/a//b\0")])
    assert isinstance(missing, XsError) and isinstance(bad, XsError)
    assert (missing.errno, missing.name) == (errno.ENOENT, "ENOENT")
    assert (bad.errno, bad.name) == (errno.EINVAL, "EINVAL")
    assert conn.exchange([(READ, b"/local/domain/0/name\0")]) == [b"Domain-0"]  # still in step


def test_pipelined_requests_are_sent_before_any_answer_and_answered_in_order(
    conn: Connection, standin: XenstoredStandin
) -> None:
    for i in range(40):
        standin.seed(f"/p/{i}", f"value {i}")
    paths = [(READ, f"/p/{i}\0".encode()) for i in range(40)] + [(READ, b"/p/none\0")]
    answers = conn.exchange(paths)
    assert answers[:40] == [f"value {i}".encode() for i in range(40)]
    assert isinstance(answers[40], XsError) and answers[40].errno == errno.ENOENT
    assert [op for op, _ in standin.ops_log[-41:]] == ["READ"] * 41


def test_transactions_and_eagain(conn: Connection, standin: XenstoredStandin) -> None:
    (tx,) = conn.exchange([(TRANSACTION_START, b"\0")])
    assert isinstance(tx, bytes)
    tx_id = int(tx.rstrip(b"\0"))
    assert conn.exchange([(WRITE, b"/t/x\0in tx")], tx_id) == [b"OK\0"]
    assert "/t/x" not in standin.nodes()  # not before the commit
    standin.eagain_commits = 1
    (refused,) = conn.exchange([(TRANSACTION_END, b"T\0")], tx_id)
    assert isinstance(refused, XsError) and refused.errno == errno.EAGAIN
    (tx,) = conn.exchange([(TRANSACTION_START, b"\0")])
    assert isinstance(tx, bytes)
    tx_id = int(tx.rstrip(b"\0"))
    conn.exchange([(WRITE, b"/t/x\0in tx")], tx_id)
    assert conn.exchange([(TRANSACTION_END, b"T\0")], tx_id) == [b"OK\0"]
    assert standin.nodes()["/t/x"] == "in tx"


def test_watch_events_interleaved_with_answers_are_skipped(
    conn: Connection, standin: XenstoredStandin
) -> None:
    """xenstored sends a watch's event when it fires, between any two answers; a request's
    answer is still its own."""
    assert conn.exchange([(WATCH, b"/w\0tok\0")]) == [b"OK\0"]  # and the first event follows
    standin.seed("/w/x", "1")  # another event, queued before the answers below
    assert conn.exchange([(READ, b"/w/x\0"), (WRITE, b"/w/y\0two"), (READ, b"/w/y\0")]) == [
        b"1",
        b"OK\0",
        b"two",
    ]
    assert conn.exchange([(READ, b"/w/x\0")]) == [b"1"]


def test_a_dropped_connection_is_lost_not_a_hang(
    conn: Connection, standin: XenstoredStandin
) -> None:
    standin.drop_after_requests = 2  # in the middle of a pipelined batch
    with pytest.raises(Lost) as lost:
        conn.exchange([(READ, b"/local/domain/0/name\0")] * 4)
    assert lost.value.errno == errno.ECONNRESET
    with pytest.raises(Lost):
        conn.exchange([(READ, b"/local/domain/0/name\0")])


def test_a_payload_xenstored_would_refuse_is_not_sent(
    conn: Connection, standin: XenstoredStandin
) -> None:
    before = standin.requests
    with pytest.raises(XsError) as big:
        conn.exchange([(WRITE, b"/big\0" + b"x" * PAYLOAD_MAX)])
    assert big.value.errno == errno.E2BIG
    assert standin.requests == before


def test_connect_failures_are_the_oserror_of_connect(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Connection(str(tmp_path / "absent.sock"))
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(stale))  # bound, never listening: a daemon that died
        with pytest.raises(ConnectionRefusedError):
            Connection(str(stale))


def test_a_character_device_is_opened_as_the_xenbus_device() -> None:
    """libxenstore opens what is not a socket as a device (/dev/xen/xenbus); /dev/null stands
    in for it: the write is taken, and the end of file is a lost connection, not a hang."""
    conn = Connection("/dev/null")
    try:
        with pytest.raises(Lost):
            conn.exchange([(READ, b"/a\0"), (READ, b"/b\0")])
    finally:
        conn.close()
    conn.close()  # twice: nothing left to close


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Callable[[Callable[[int, int, int], bytes]], str]]:
    """A daemon that answers each request's header (op, req_id, tx_id) with the given bytes."""
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def start(answer: Callable[[int, int, int], bytes]) -> str:
        path = str(tmp_path / f"scripted{len(listeners)}.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(1)
        listeners.append(listener)

        def serve() -> None:
            peer = listener.accept()[0]
            with peer, peer.makefile("rb") as stream:
                while len(header := stream.read(HEADER.size)) == HEADER.size:
                    op, req_id, tx_id, length = HEADER.unpack(header)
                    stream.read(length)
                    peer.sendall(answer(op, req_id, tx_id))

        threads.append(threading.Thread(target=serve, daemon=True))
        threads[-1].start()
        return path

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(timeout=5)


def frame(op: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    return HEADER.pack(op, req_id, tx_id, len(payload)) + payload


def test_an_answer_out_of_turn_is_a_lost_connection(
    scripted: Callable[[Callable[[int, int, int], bytes]], str],
) -> None:
    conn = Connection(scripted(lambda op, req, tx: frame(op, req + 1, tx, b"x")))
    with pytest.raises(Lost, match="out of turn"):
        conn.exchange([(READ, b"/a\0")])
    conn.close()
    conn = Connection(scripted(lambda op, req, tx: frame(DIRECTORY, req, tx, b"x")))
    with pytest.raises(Lost, match="out of turn"):
        conn.exchange([(READ, b"/a\0")])  # the right id, but the answer to another request
    conn.close()


def test_an_unknown_error_name_is_einval_as_for_libxenstore_and_events_split_frames(
    scripted: Callable[[Callable[[int, int, int], bytes]], str],
) -> None:
    def answer(op: int, req: int, tx: int) -> bytes:
        event = frame(WATCH_EVENT, 0, 0, b"/w\0tok\0")
        return event + frame(ERROR, req, tx, b"EWEIRD\0") + event

    conn = Connection(scripted(answer))
    (weird,) = conn.exchange([(READ, b"/a\0")])
    assert isinstance(weird, XsError)
    assert (weird.errno, weird.name) == (errno.EINVAL, "EWEIRD")
    (again,) = conn.exchange([(READ, b"/a\0")])  # the trailing event was skipped, not misread
    assert isinstance(again, XsError) and again.name == "EWEIRD"
    conn.close()


# --- the C clients (libxenstore) as observers -----------------------------------------------


@needs_c_clients
def test_what_we_write_xenstore_read_reads_and_back(conn: Connection) -> None:
    assert conn.exchange([(WRITE, b"/x/ours\0from xswire")]) == [b"OK\0"]
    assert c_client("xenstore-read", "/x/ours").stdout == "from xswire\n"
    assert c_client("xenstore-write", "/x/theirs", "from libxenstore").returncode == 0
    assert conn.exchange([(READ, b"/x/theirs\0")]) == [b"from libxenstore"]
    assert conn.exchange([(DIRECTORY, b"/x\0")]) == [b"ours\0theirs\0"]
