"""The stand-in xenstored against real clients: Debian's xenstore-* tools (libxenstore) and pyxs.

The stand-in is only worth having if it answers as C xenstored does, so it is checked here with
the clients that talk to the real one. Where a C client disagrees, the stand-in is wrong.
"""

from __future__ import annotations

import errno
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pyxs

from tests.xenstored_standin import XenstoredStandin

C_CLIENTS = (
    "xenstore-read",
    "xenstore-write",
    "xenstore-ls",
    "xenstore-list",
    "xenstore-exists",
    "xenstore-rm",
    "xenstore-chmod",
    "xenstore-watch",
)
needs_c_clients = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in C_CLIENTS),
    reason="Debian's xenstore-utils (the libxenstore C clients) are not installed",
)
HEADER = struct.Struct("<IIII")
STANDIN = Path(__file__).with_name("xenstored_standin.py")


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[XenstoredStandin]:
    path = str(tmp_path / "xenstored.sock")
    monkeypatch.setenv("XENSTORED_PATH", path)  # libxenstore and pyxs both look here
    with XenstoredStandin(path) as server:
        yield server


@pytest.fixture
def raw(standin: XenstoredStandin) -> Iterator[Callable[[], Raw]]:
    """Opens bare connections to the stand-in, all closed at the end."""
    opened: list[Raw] = []

    def connect() -> Raw:
        opened.append(Raw(standin.socket_path))
        return opened[-1]

    yield connect
    for conn in opened:
        conn.sock.close()


@pytest.fixture
def client(standin: XenstoredStandin) -> Iterator[pyxs.Client]:
    with pyxs.Client(unix_socket_path=standin.socket_path) as c:
        yield c


def xs(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10)


def ops(standin: XenstoredStandin) -> list[str]:
    return [op for op, _ in standin.ops_log]


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Raw:
    """A bare wire-protocol client, for what neither libxenstore nor pyxs will send."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.events: list[bytes] = []

    def call(self, op: int, payload: bytes, tx_id: int = 0, req_id: int = 77) -> tuple[int, bytes]:
        self.sock.sendall(HEADER.pack(op, req_id, tx_id, len(payload)) + payload)
        while True:
            kind, got_req, got_tx, payload = self.frame()
            if kind != 15:  # a WATCH_EVENT may come before or after any reply
                assert (got_req, got_tx) == (req_id, tx_id), "reply must echo the header"
                return kind, payload
            self.events.append(payload)

    def frame(self) -> tuple[int, int, int, bytes]:
        kind, req_id, tx_id, length = HEADER.unpack(self.recv(HEADER.size))
        return kind, req_id, tx_id, self.recv(length)

    def recv(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionResetError("stand-in closed the connection")
            data += chunk
        return data


# --- Debian's C clients (libxenstore) ---------------------------------------------------------


@needs_c_clients
def test_write_read_round_trip_creates_parents(standin: XenstoredStandin) -> None:
    assert xs("xenstore-write", "/vm/1/name", "guest-1").returncode == 0
    assert xs("xenstore-read", "/vm/1/name").stdout == "guest-1\n"
    assert xs("xenstore-read", "/vm/1").stdout == "\n"
    nodes = standin.nodes()
    assert (nodes["/vm"], nodes["/vm/1"], nodes["/vm/1/name"]) == ("", "", "guest-1")


@needs_c_clients
def test_fresh_tree_is_a_dom0_tree_and_ls_prints_it_as_xenstored(standin: XenstoredStandin) -> None:
    assert xs("xenstore-ls", "/").stdout == (
        'local = ""\n domain = ""\n  0 = ""\n   name = "Domain-0"\ntool = ""\n'
    )
    assert xs("xenstore-ls", "-f", "/local").stdout == (
        '/local/domain = ""\n/local/domain/0 = ""\n/local/domain/0/name = "Domain-0"\n'
    )
    assert standin.nodes() == {
        "/": "",
        "/local": "",
        "/local/domain": "",
        "/local/domain/0": "",
        "/local/domain/0/name": "Domain-0",
        "/tool": "",
    }


@needs_c_clients
def test_list_gives_children_oldest_first_and_exists_answers_by_exit_code(
    standin: XenstoredStandin,
) -> None:
    for child in ("b", "a", "c"):
        standin.seed(f"/d/{child}", child)
    assert xs("xenstore-list", "/d").stdout == "b\na\nc\n"
    assert xs("xenstore-list", "-p", "/d").stdout == "/d/b\n/d/a\n/d/c\n"
    assert xs("xenstore-exists", "/d/a").returncode == 0
    assert xs("xenstore-exists", "/d/nope").returncode == 1


@needs_c_clients
def test_missing_nodes_fail_as_the_c_clients_report_enoent(standin: XenstoredStandin) -> None:
    read = xs("xenstore-read", "/nope")
    assert (read.returncode, read.stderr) == (1, "xenstore-read: couldn't read path /nope\n")
    listing = xs("xenstore-list", "/nope")
    assert (listing.returncode, listing.stderr) == (1, "xenstore-list: could not list path /nope\n")
    rm = xs("xenstore-rm", "/nope/child")  # the parent is missing too: ENOENT
    assert (rm.returncode, rm.stderr) == (1, "xenstore-rm: could not remove path /nope/child\n")


@needs_c_clients
def test_rm_takes_the_subtree_and_a_missing_child_of_an_existing_node_is_fine(
    standin: XenstoredStandin,
) -> None:
    for path in ("/r/a/x", "/r/a/y/z", "/r/b"):
        standin.seed(path, "v")
    assert xs("xenstore-rm", "/r/a").returncode == 0
    assert sorted(p for p in standin.nodes() if p.startswith("/r")) == ["/r", "/r/b"]
    assert xs("xenstore-rm", "/r/never-there").returncode == 0
    assert xs("xenstore-rm", "-t", "/r/b").returncode == 0  # tidies the now-empty /r too
    assert "/r" not in standin.nodes()


@needs_c_clients
def test_perms_default_to_n0_are_set_by_chmod_and_inherited_by_new_children(
    standin: XenstoredStandin,
) -> None:
    standin.seed("/p")
    assert xs("xenstore-ls", "-p", "/local/domain").stdout.split()[-1] == "(n0)"
    assert xs("xenstore-chmod", "/p", "r0", "b5").returncode == 0
    assert xs("xenstore-write", "/p/child", "v").returncode == 0
    assert xs("xenstore-ls", "-p", "/p").stdout.split()[-1] == "(r0,b5)"
    with pyxs.Client(unix_socket_path=standin.socket_path) as c:
        assert c.get_perms(b"/p/child") == [b"r0", b"b5"]


@needs_c_clients
def test_relative_paths_are_under_dom0s_home(standin: XenstoredStandin) -> None:
    assert xs("xenstore-write", "data/x", "1").returncode == 0
    assert standin.nodes()["/local/domain/0/data/x"] == "1"
    assert xs("xenstore-read", "data/x").stdout == "1\n"


@needs_c_clients
def test_c_clients_use_transactions_only_for_more_than_one_key_or_for_rm_list_exists(
    standin: XenstoredStandin,
) -> None:
    xs("xenstore-write", "/t/a", "1")
    assert ops(standin) == ["WRITE"]
    standin.ops_log.clear()
    xs("xenstore-write", "/t/a", "1", "/t/b", "2")
    assert ops(standin) == ["TRANSACTION_START", "WRITE", "WRITE", "TRANSACTION_END"]
    standin.ops_log.clear()
    xs("xenstore-exists", "/t/nope")
    assert ops(standin) == ["TRANSACTION_START", "READ", "TRANSACTION_END"]  # ends with "F"


@needs_c_clients
def test_c_clients_retry_a_commit_that_fails_with_eagain(standin: XenstoredStandin) -> None:
    standin.eagain_commits = 2
    done = xs("xenstore-write", "/e/a", "1", "/e/b", "2")
    assert done.returncode == 0, done.stderr
    assert ops(standin).count("TRANSACTION_START") == 3
    assert standin.eagain_commits == 0
    assert standin.nodes()["/e/b"] == "2"


@needs_c_clients
def test_dropped_connection_is_an_error_for_the_c_client(standin: XenstoredStandin) -> None:
    standin.drop_after_requests = 0
    dropped = xs("xenstore-read", "/local/domain/0/name")
    assert (dropped.returncode, dropped.stdout) == (1, "")
    assert "couldn't read path" in dropped.stderr
    assert standin.drop_after_requests is None
    assert xs("xenstore-read", "/local/domain/0/name").stdout == "Domain-0\n"


@needs_c_clients
def test_watch_fires_once_up_front_then_on_changes_below(standin: XenstoredStandin) -> None:
    with subprocess.Popen(
        ["xenstore-watch", "-n", "4", "/w"], stdout=subprocess.PIPE, text=True
    ) as watcher:
        wait_for(lambda: ("WATCH", "/w") in standin.ops_log)
        standin.seed("/elsewhere", "not watched")
        assert xs("xenstore-write", "/w/x", "1").returncode == 0
        standin.remove("/w")  # /w/x goes too, but fires only watches on exactly /w/x
        standin.seed("/w/y")
        out, _ = watcher.communicate(timeout=5)
    assert out == "/w\n/w/x\n/w\n/w/y\n"


@needs_c_clients
def test_a_directory_too_big_for_one_reply_is_paged_with_directory_part(
    standin: XenstoredStandin,
) -> None:
    names = [f"vif-with-a-long-name-{i:04d}" for i in range(300)]  # ~8 KiB of names
    for name in names:
        standin.seed(f"/big/{name}")
    listing = xs("xenstore-list", "/big")
    assert listing.stdout.split() == names
    assert ops(standin).count("DIRECTORY_PART") >= 2


@needs_c_clients
def test_command_line_prints_ready_serves_and_cleans_up_on_sigterm(tmp_path: Path) -> None:
    path = str(tmp_path / "cli.sock")
    with subprocess.Popen(
        [sys.executable, str(STANDIN), "--socket", path], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"ready {path}\n"
        read = subprocess.run(
            ["xenstore-read", "/local/domain/0/name"],
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, "XENSTORED_PATH": path},
        )
        assert read.stdout == "Domain-0\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    assert not os.path.exists(path)


@needs_c_clients
def test_many_concurrent_c_clients(standin: XenstoredStandin) -> None:
    procs = [
        subprocess.Popen(["xenstore-write", f"/many/{i}", str(i), f"/many/{i}-b", "b"])
        for i in range(24)
    ]
    assert [p.wait(timeout=10) for p in procs] == [0] * 24
    assert len([p for p in standin.nodes() if p.startswith("/many/")]) == 48


# --- pyxs --------------------------------------------------------------------------------------


def test_pyxs_round_trip_list_exists_mkdir_delete(client: pyxs.Client) -> None:
    client.write(b"/q/a/b", b"value")
    assert client.read(b"/q/a/b") == b"value"
    assert client.read(b"/q/a") == b""
    client.mkdir(b"/q/dir/sub")
    client.mkdir(b"/q/dir")  # fine on an existing node
    assert client.list(b"/q") == [b"a", b"dir"]
    assert client.list(b"/q/dir") == [b"sub"]
    assert client.exists(b"/q/a") and not client.exists(b"/q/zz")
    client.delete(b"/q/a")
    assert client.list(b"/q") == [b"dir"]
    assert client.get_domain_path(0) == b"/local/domain/0"
    assert client.is_domain_introduced(0) and not client.is_domain_introduced(7)


def test_pyxs_errors_carry_the_errno(client: pyxs.Client) -> None:
    for call in (
        lambda: client.read(b"/nope"),
        lambda: client.delete(b"/nope/child"),
        lambda: client.set_perms(b"/nope", [b"n0"]),
    ):
        with pytest.raises(pyxs.PyXSError) as failure:
            call()
        assert failure.value.args[0] == errno.ENOENT


def test_transaction_sees_its_own_view_and_others_see_it_on_commit(
    standin: XenstoredStandin, client: pyxs.Client
) -> None:
    with pyxs.Client(unix_socket_path=standin.socket_path) as other:
        client.transaction()
        client.write(b"/tx/a", b"1")
        client.write(b"/tx/0", b"0")
        assert client.read(b"/tx/a") == b"1"
        assert not other.exists(b"/tx")
        assert client.commit() is True
        assert other.read(b"/tx/a") == b"1"
        assert other.list(b"/tx") == [b"a", b"0"]  # in order of creation
        client.transaction()
        client.delete(b"/tx")
        client.rollback()
        assert other.read(b"/tx/a") == b"1"


def test_conflicting_transaction_fails_with_eagain(
    standin: XenstoredStandin, client: pyxs.Client
) -> None:
    standin.seed("/c/value", "0")
    with pyxs.Client(unix_socket_path=standin.socket_path) as other:
        client.transaction()
        assert client.read(b"/c/value") == b"0"
        other.write(b"/c/value", b"theirs")
        client.write(b"/c/other", b"mine")
        assert client.commit() is False
    assert standin.nodes()["/c/value"] == "theirs"
    assert "/c/other" not in standin.nodes()
    client.transaction()  # the same work again, nothing in between: it commits
    client.write(b"/c/other", b"mine")
    assert client.commit() is True
    client.transaction()  # a listing counts too
    assert client.list(b"/c") == [b"value", b"other"]
    standin.seed("/c/third")
    assert client.commit() is False


def test_transactions_creating_siblings_conflict_through_the_parent(
    standin: XenstoredStandin, client: pyxs.Client
) -> None:
    standin.seed("/s")
    with pyxs.Client(unix_socket_path=standin.socket_path) as other:
        client.transaction()
        other.transaction()
        client.write(b"/s/a", b"1")
        other.write(b"/s/b", b"2")
        assert other.commit() is True
        assert client.commit() is False  # as xenstored: /s's children changed


def test_eagain_commits_injection(standin: XenstoredStandin, client: pyxs.Client) -> None:
    standin.eagain_commits = 1
    client.transaction()
    client.write(b"/i/x", b"1")
    assert client.commit() is False
    assert standin.eagain_commits == 0 and "/i/x" not in standin.nodes()
    client.transaction()
    client.write(b"/i/x", b"1")
    assert client.commit() is True


def test_pyxs_watch_events_and_seed_fires_them(
    standin: XenstoredStandin, client: pyxs.Client
) -> None:
    monitor = client.monitor()
    monitor.watch(b"/local/domain/3", b"tok")
    assert monitor.events.get(timeout=5) == (b"/local/domain/3", b"tok")
    standin.seed("/local/domain/3/device/vif/0/state", "4")
    assert monitor.events.get(timeout=5) == (b"/local/domain/3/device/vif/0/state", b"tok")
    monitor.unwatch(b"/local/domain/3", b"tok")
    standin.seed("/local/domain/3/x", "1")
    with pytest.raises(queue.Empty):
        monitor.events.get(timeout=0.1)


def test_many_concurrent_pyxs_clients_increment_a_counter_in_transactions(
    standin: XenstoredStandin,
) -> None:
    standin.seed("/counter", "0")
    clients, rounds = 12, 15

    def work() -> None:
        with pyxs.Client(unix_socket_path=standin.socket_path) as c:
            for _ in range(rounds):
                while True:
                    c.transaction()
                    c.write(b"/counter", str(int(c.read(b"/counter")) + 1).encode())
                    if c.commit():
                        break

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert standin.nodes()["/counter"] == str(clients * rounds)
    assert standin.requests >= clients * rounds * 4


# --- the wire, byte by byte -------------------------------------------------------------------


def test_wire_replies_as_xenstored(raw: Callable[[], Raw]) -> None:
    conn = raw()
    assert conn.call(11, b"/w/a\0value") == (11, b"OK\0")
    assert conn.call(2, b"/w/a\0") == (2, b"value")
    assert conn.call(1, b"/w\0") == (1, b"a\0")
    assert conn.call(1, b"/w/a\0") == (1, b"")
    assert conn.call(3, b"/w/a\0") == (3, b"n0\0")
    assert conn.call(2, b"/nope\0") == (16, b"ENOENT\0")
    assert conn.call(2, b"/bad//path\0") == (16, b"EINVAL\0")
    assert conn.call(2, b"/w/a") == (16, b"EINVAL\0")  # no NUL
    assert conn.call(13, b"/\0") == (16, b"EINVAL\0")
    assert conn.call(14, b"/w/a\0x1\0") == (16, b"EINVAL\0")
    assert conn.call(99, b"") == (16, b"ENOSYS\0")  # unknown type, as xenstored answers
    assert conn.call(15, b"") == (16, b"ENOSYS\0")
    assert conn.call(8, b"1\x002\x003\x00") == (16, b"EINVAL\0")  # INTRODUCE: no hypervisor
    assert conn.call(10, b"5\0") == (10, b"/local/domain/5\0")


def test_wire_transactions(standin: XenstoredStandin, raw: Callable[[], Raw]) -> None:
    conn = raw()
    kind, tx = conn.call(6, b"\0")
    assert kind == 6 and tx.endswith(b"\0") and tx[:-1].isdigit()
    tx_id = int(tx[:-1])
    assert conn.call(11, b"/x\x001", tx_id=tx_id) == (11, b"OK\0")
    assert conn.call(6, b"\0", tx_id=tx_id) == (16, b"EBUSY\0")
    assert conn.call(2, b"/x\0", tx_id=tx_id + 1000) == (16, b"ENOENT\0")
    assert conn.call(7, b"X\0", tx_id=tx_id) == (16, b"EINVAL\0")
    assert conn.call(7, b"T\0", tx_id=tx_id) == (7, b"OK\0")
    assert conn.call(7, b"T\0", tx_id=tx_id) == (16, b"ENOENT\0")  # it is over
    assert standin.nodes()["/x"] == "1"


def test_wire_transaction_commits_the_parents_its_write_created(
    standin: XenstoredStandin, raw: Callable[[], Raw]
) -> None:
    conn = raw()
    tx_id = int(conn.call(6, b"\0")[1][:-1])
    assert conn.call(11, b"/a/b/c\x00v", tx_id=tx_id) == (11, b"OK\0")
    assert conn.call(7, b"T\0", tx_id=tx_id) == (7, b"OK\0")
    nodes = standin.nodes()
    assert (nodes["/a"], nodes["/a/b"], nodes["/a/b/c"]) == ("", "", "v")
    assert conn.call(1, b"/a\0") == (1, b"b\0")  # a directory walk finds them


def test_wire_watch_acks_then_fires_and_rejects_duplicates(raw: Callable[[], Raw]) -> None:
    conn = raw()
    assert conn.call(4, b"/w\0tok\0") == (4, b"OK\0")
    assert conn.frame() == (15, 0, 0, b"/w\0tok\0")  # after the ack, req_id 0
    assert conn.call(4, b"/w\0tok\0") == (16, b"EEXIST\0")
    assert conn.call(4, b"rel\0t2\0") == (4, b"OK\0")
    assert conn.frame()[3] == b"rel\0t2\0"  # relative watches get relative paths
    assert conn.call(11, b"rel/x\x001") == (11, b"OK\0")
    assert conn.events == [b"rel/x\0t2\0"]  # its own change: the event came before the ack
    assert conn.call(5, b"/w\0nope\0") == (16, b"ENOENT\0")
    assert conn.call(21, b"") == (21, b"OK\0")  # RESET_WATCHES
    assert conn.call(5, b"/w\0tok\0") == (16, b"ENOENT\0")


def test_drop_after_requests_counts_every_connection(
    standin: XenstoredStandin, raw: Callable[[], Raw]
) -> None:
    first, second = raw(), raw()
    standin.drop_after_requests = 2
    assert first.call(2, b"/tool\0") == (2, b"")
    assert second.call(2, b"/tool\0") == (2, b"")
    with pytest.raises(ConnectionResetError):
        first.call(2, b"/tool\0")
    assert standin.drop_after_requests is None
    assert second.call(2, b"/tool\0") == (2, b"")
    assert standin.requests == 3 and standin.ops_log[-1] == ("READ", "/tool")


def test_stop_closes_every_connection_and_removes_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    server = XenstoredStandin(path).start()
    raw = Raw(path)
    assert raw.call(2, b"/tool\0") == (2, b"")
    server.stop()
    assert not os.path.exists(path)
    assert raw.sock.recv(1) == b""
    raw.sock.close()
