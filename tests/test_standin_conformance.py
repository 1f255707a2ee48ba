"""The stand-in xenstored against real clients: Debian's xenstore-* tools (libxenstore) and pyxs.

The stand-in is only worth having if it answers as C xenstored does, so it is checked here with
the clients that talk to the real one. Where a C client disagrees, the stand-in is wrong.

The same tests run against a real xenstored (the e2e tier, in dom0 as root, where the unix
socket makes every client privileged) when ``REMUS_NETBUF_REAL_XENSTORED`` names its socket::

    REMUS_NETBUF_REAL_XENSTORED=/run/xenstored/socket .venv/bin/python -m pytest -q \
        -p no:cacheprovider -rA --junitxml=OUT.xml tests/test_standin_conformance.py

Then no stand-in is started: the clients are pointed (``XENSTORED_PATH``) at that socket, and
each test works under its own subtree, ``/remus-netbuf-conformance/<test>`` (and the same under
``/local/domain/0`` for relative paths), removed afterwards, since the real tree is shared and
not empty. The tests write the same paths against the stand-in, so one assertion holds for both
and a difference is a failure (then the stand-in is fixed). Tests of the stand-in's own machinery
(op log, EAGAIN injection, dropped connections, its command line, stop) skip there, naming it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pyxs

from tests.xenstored_standin import HOME, SEED, XenstoredStandin

REAL_ENV = "REMUS_NETBUF_REAL_XENSTORED"
REAL = os.environ.get(REAL_ENV)  # the socket of a real xenstored, or None: the stand-in
TOP = "/remus-netbuf-conformance"  # each test's subtree is below this, here and under HOME
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


def standin_only(machinery: str) -> pytest.MarkDecorator:
    """For a test of the stand-in's own machinery, which a real xenstored does not have."""
    return pytest.mark.skipif(REAL is not None, reason=f"stand-in only: {machinery} ({REAL_ENV})")


class Store:
    """The xenstored under test, and this test's own subtree in it (``base``; ``rel`` is the
    same relative to dom0's home). Seeds, removes and reads back over a bare connection of its
    own, as another toolstack process would, against the stand-in and a real xenstored alike."""

    def __init__(self, socket_path: str, name: str, standin: XenstoredStandin | None) -> None:
        self.socket_path = socket_path
        self.standin = standin
        self.base = f"{TOP}/{name}"
        self.rel = f"{TOP[1:]}/{name}"
        self.conn = Raw(socket_path)

    def ask(self, op: int, *args: str, payload: bytes | None = None) -> bytes:
        """The reply to one request (each arg NUL-terminated), or OSError with its errno."""
        if payload is None:
            payload = "".join(f"{arg}\0" for arg in args).encode("latin-1")
        kind, body = self.conn.call(op, payload)
        if kind == 16:
            name = body[:-1].decode()
            raise OSError(getattr(errno, name, errno.EIO), f"op {op} {payload!r}: {name}")
        return body

    def seed(self, path: str, value: str = "") -> None:
        self.ask(11, payload=f"{path}\0{value}".encode("latin-1"))  # WRITE, outside any transaction

    def remove(self, path: str) -> None:
        self.ask(13, path)

    def read(self, path: str) -> str:
        return self.ask(2, path).decode("latin-1")

    def children(self, path: str) -> list[str]:
        return self.ask(1, path).decode("latin-1").split("\0")[:-1]

    def perms(self, path: str) -> list[str]:
        return self.ask(3, path).decode().split("\0")[:-1]

    def exists(self, path: str) -> bool:
        try:
            self.read(path)
        except FileNotFoundError:
            return False
        return True

    def nodes(self, top: str | None = None) -> dict[str, str]:
        """Every node from ``top`` (this test's subtree) down, with its value."""
        found: dict[str, str] = {}

        def walk(path: str) -> None:
            found[path] = self.read(path)
            for child in self.children(path):
                walk(f"{path}/{child}")

        if self.exists(top or self.base):
            walk(top or self.base)
        return found

    def clean(self) -> None:
        """Remove this test's subtrees, and the common tops once no test is left under them."""
        for top in (TOP, f"{HOME}{TOP}"):
            mine = top + self.base[len(TOP) :]
            for path in (mine, top):
                if self.exists(path) and (path == mine or not self.children(path)):
                    self.remove(path)


@pytest.fixture
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The real xenstored when ``REMUS_NETBUF_REAL_XENSTORED`` names it, else a fresh stand-in."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)
    with contextlib.ExitStack() as stack:
        if REAL is not None:
            path, server = REAL, None
        else:
            path = str(request.getfixturevalue("tmp_path") / "xenstored.sock")
            server = stack.enter_context(XenstoredStandin(path))
        monkeypatch.setenv("XENSTORED_PATH", path)  # libxenstore and pyxs both look here
        store = Store(path, name, server)
        stack.callback(store.conn.sock.close)
        store.clean()  # what a killed run left behind
        yield store
        store.clean()


@pytest.fixture
def standin(store: Store) -> XenstoredStandin:
    """The stand-in itself, for tests of its machinery (marked ``standin_only``)."""
    assert store.standin is not None, "a stand-in-only test ran against a real xenstored"
    return store.standin


@pytest.fixture(scope="session", autouse=True)
def _target_in_the_junit_report(record_testsuite_property: Callable[[str, object], None]) -> None:
    """Name the xenstored the results are about, for the e2e runner that copies the report."""
    record_testsuite_property("xenstored", f"real {REAL}" if REAL else "stand-in")


@pytest.fixture
def raw(store: Store) -> Iterator[Callable[[], Raw]]:
    """Opens bare connections to the xenstored under test, all closed at the end."""
    opened: list[Raw] = []

    def connect() -> Raw:
        opened.append(Raw(store.socket_path))
        return opened[-1]

    yield connect
    for conn in opened:
        conn.sock.close()


@pytest.fixture
def client(store: Store) -> Iterator[pyxs.Client]:
    with pyxs.Client(unix_socket_path=store.socket_path) as c:
        yield c


def xs(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10)


def ops(standin: XenstoredStandin) -> list[str]:
    return [op for op, _ in standin.ops_log]


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
                raise ConnectionResetError("xenstored closed the connection")
            data += chunk
        return data


# --- Debian's C clients (libxenstore) ---------------------------------------------------------


@needs_c_clients
def test_write_read_round_trip_creates_parents(store: Store) -> None:
    b = store.base
    assert xs("xenstore-write", f"{b}/vm/1/name", "guest-1").returncode == 0
    assert xs("xenstore-read", f"{b}/vm/1/name").stdout == "guest-1\n"
    assert xs("xenstore-read", f"{b}/vm/1").stdout == "\n"
    assert store.nodes() == {b: "", f"{b}/vm": "", f"{b}/vm/1": "", f"{b}/vm/1/name": "guest-1"}


@needs_c_clients
def test_every_node_the_stand_in_seeds_is_in_the_tree_with_its_value_and_perms(
    store: Store,
) -> None:
    """A real dom0's tree holds much more; these are what xenstored itself (/tool/xenstored)
    and xen-init-dom0 (/local/domain/0/{name,domid}) make, parents included."""
    seeded = {path: value for path, value in SEED.items()}
    for path in list(seeded):
        while (path := path.rsplit("/", 1)[0]) and path not in seeded:
            seeded[path] = ""
    for path, value in sorted(seeded.items()):
        read = xs("xenstore-read", path)
        assert (read.returncode, read.stdout) == (0, value + "\n"), path
        assert store.perms(path) == ["n0"], path
    assert store.perms("/") == ["n0"]


@needs_c_clients
@standin_only("its fresh tree (a real dom0's tree holds much more)")
def test_the_stand_ins_fresh_tree_is_only_what_it_seeds(standin: XenstoredStandin) -> None:
    standin.remove(TOP)  # the fixture's connection looked for leftovers there
    assert standin.nodes() == {
        "/": "",
        "/local": "",
        "/local/domain": "",
        "/local/domain/0": "",
        "/local/domain/0/name": "Domain-0",
        "/local/domain/0/domid": "0",
        "/tool": "",
        "/tool/xenstored": "",
    }


@needs_c_clients
def test_ls_prints_a_tree_as_xenstored_does(store: Store) -> None:
    b = store.base
    store.seed(f"{b}/local/domain/0/name", "Domain-0")
    store.seed(f"{b}/tool")
    assert xs("xenstore-ls", b).stdout == (
        'local = ""\n domain = ""\n  0 = ""\n   name = "Domain-0"\ntool = ""\n'
    )
    assert xs("xenstore-ls", "-f", f"{b}/local").stdout == (
        f'{b}/local/domain = ""\n{b}/local/domain/0 = ""\n{b}/local/domain/0/name = "Domain-0"\n'
    )


@needs_c_clients
def test_list_gives_children_oldest_first_and_exists_answers_by_exit_code(store: Store) -> None:
    d = f"{store.base}/d"
    for child in ("b", "a", "c"):
        store.seed(f"{d}/{child}", child)
    assert xs("xenstore-list", d).stdout == "b\na\nc\n"
    assert xs("xenstore-list", "-p", d).stdout == f"{d}/b\n{d}/a\n{d}/c\n"
    assert xs("xenstore-exists", f"{d}/a").returncode == 0
    assert xs("xenstore-exists", f"{d}/nope").returncode == 1


@needs_c_clients
def test_missing_nodes_fail_as_the_c_clients_report_enoent(store: Store) -> None:
    nope = f"{store.base}/nope"
    read = xs("xenstore-read", nope)
    assert (read.returncode, read.stderr) == (1, f"xenstore-read: couldn't read path {nope}\n")
    listing = xs("xenstore-list", nope)
    assert (listing.returncode, listing.stderr) == (
        1,
        f"xenstore-list: could not list path {nope}\n",
    )
    rm = xs("xenstore-rm", f"{nope}/child")  # the parent is missing too: ENOENT
    assert (rm.returncode, rm.stderr) == (1, f"xenstore-rm: could not remove path {nope}/child\n")


@needs_c_clients
def test_rm_takes_the_subtree_and_a_missing_child_of_an_existing_node_is_fine(
    store: Store,
) -> None:
    b = store.base
    for path in ("r/a/x", "r/a/y/z", "r/b", "keep"):
        store.seed(f"{b}/{path}", "v")
    assert xs("xenstore-rm", f"{b}/r/a").returncode == 0
    assert sorted(store.nodes(f"{b}/r")) == [f"{b}/r", f"{b}/r/b"]
    assert xs("xenstore-rm", f"{b}/r/never-there").returncode == 0
    assert xs("xenstore-rm", "-t", f"{b}/r/b").returncode == 0  # tidies the now-empty /r too
    assert store.nodes() == {b: "", f"{b}/keep": "v"}  # and stops at a node with children


@needs_c_clients
def test_perms_default_to_n0_are_set_by_chmod_and_inherited_by_new_children(
    store: Store,
) -> None:
    p = f"{store.base}/p"
    store.seed(p)
    assert xs("xenstore-ls", "-p", store.base).stdout.split()[-1] == "(n0)"  # from /, as dom0's
    assert xs("xenstore-chmod", p, "r0", "b5").returncode == 0
    assert xs("xenstore-write", f"{p}/child", "v").returncode == 0
    assert xs("xenstore-ls", "-p", p).stdout.split()[-1] == "(r0,b5)"
    assert store.perms(f"{p}/child") == ["r0", "b5"]


@needs_c_clients
def test_relative_paths_are_under_dom0s_home(store: Store) -> None:
    assert xs("xenstore-write", f"{store.rel}/data/x", "1").returncode == 0
    assert store.nodes(f"{HOME}/{store.rel}/data") == {
        f"{HOME}/{store.rel}/data": "",
        f"{HOME}/{store.rel}/data/x": "1",
    }
    assert xs("xenstore-read", f"{store.rel}/data/x").stdout == "1\n"


@needs_c_clients
@standin_only("its op log")
def test_c_clients_use_transactions_only_for_more_than_one_key_or_for_rm_list_exists(
    store: Store, standin: XenstoredStandin
) -> None:
    b = store.base
    standin.ops_log.clear()
    xs("xenstore-write", f"{b}/t/a", "1")
    assert ops(standin) == ["WRITE"]
    standin.ops_log.clear()
    xs("xenstore-write", f"{b}/t/a", "1", f"{b}/t/b", "2")
    assert ops(standin) == ["TRANSACTION_START", "WRITE", "WRITE", "TRANSACTION_END"]
    standin.ops_log.clear()
    xs("xenstore-exists", f"{b}/t/nope")
    assert ops(standin) == ["TRANSACTION_START", "READ", "TRANSACTION_END"]  # ends with "F"


@needs_c_clients
@standin_only("its EAGAIN injection and op log")
def test_c_clients_retry_a_commit_that_fails_with_eagain(
    store: Store, standin: XenstoredStandin
) -> None:
    b = store.base
    standin.eagain_commits = 2
    standin.ops_log.clear()
    done = xs("xenstore-write", f"{b}/e/a", "1", f"{b}/e/b", "2")
    assert done.returncode == 0, done.stderr
    assert ops(standin).count("TRANSACTION_START") == 3
    assert standin.eagain_commits == 0
    assert store.nodes()[f"{b}/e/b"] == "2"


@needs_c_clients
@standin_only("its drop_after_requests")
def test_dropped_connection_is_an_error_for_the_c_client(standin: XenstoredStandin) -> None:
    standin.drop_after_requests = 0
    dropped = xs("xenstore-read", "/local/domain/0/name")
    assert (dropped.returncode, dropped.stdout) == (1, "")
    assert "couldn't read path" in dropped.stderr
    assert standin.drop_after_requests is None
    assert xs("xenstore-read", "/local/domain/0/name").stdout == "Domain-0\n"


@needs_c_clients
def test_watch_fires_once_up_front_then_on_changes_below(store: Store) -> None:
    w = f"{store.base}/w"
    with subprocess.Popen(["xenstore-watch", "-n", "4", w], stdout=subprocess.PIPE) as watcher:
        assert watcher.stdout is not None
        assert select.select([watcher.stdout], [], [], 10)[0], "no up-front event"
        assert watcher.stdout.readline() == f"{w}\n".encode()  # so the watch is set
        store.seed(f"{store.base}/elsewhere", "not watched")
        assert xs("xenstore-write", f"{w}/x", "1").returncode == 0
        store.remove(w)  # w/x goes too, but fires only watches on exactly w/x
        store.seed(f"{w}/y")
        out, _ = watcher.communicate(timeout=10)
    assert out.decode() == f"{w}/x\n{w}\n{w}/y\n"


@needs_c_clients
def test_a_directory_too_big_for_one_reply_is_paged_with_directory_part(
    store: Store, raw: Callable[[], Raw]
) -> None:
    big = f"{store.base}/big"
    names = [f"vif-with-a-long-name-{i:04d}" for i in range(300)]  # ~8 KiB of names
    for name in names:
        store.seed(f"{big}/{name}")
    listing = xs("xenstore-list", big)
    assert listing.stdout.split() == names
    conn = raw()
    assert conn.call(1, f"{big}\0".encode()) == (16, b"E2BIG\0")  # so the client had to page


def test_directory_part_pages_under_one_generation_as_xenstored(
    store: Store, raw: Callable[[], Raw]
) -> None:
    """send_directory_part(): the node's generation, then whole names from the byte offset for
    as many as fit in XENSTORE_PAYLOAD_MAX, an empty name after the last; past the end, only
    that. A new child gives the node a new generation: the client starts again."""
    big = f"{store.base}/big"
    names = [f"vif-with-a-long-name-{i:04d}".encode() for i in range(300)]
    for name in names:
        store.seed(f"{big}/{name.decode()}")
    conn = raw()
    kind, first = conn.call(22, f"{big}\x000\0".encode())
    gen = first.split(b"\0")[0]
    assert kind == 22 and gen.isdigit() and len(first) <= 4096
    assert 4096 - 28 < len(first) and not first.endswith(b"\0\0")  # full, and not the last
    offset = len(first) - len(gen) - 1
    kind, second = conn.call(22, f"{big}\0{offset}\0".encode())
    assert kind == 22 and second.split(b"\0")[0] == gen  # nothing changed between the pages
    rest = second[len(gen) + 1 :]
    assert rest.endswith(b"\0\0")  # the last page
    assert first[len(gen) + 1 :] + rest == b"\0".join(names) + b"\0\0"
    end = len(b"\0".join(names)) + 1
    assert conn.call(22, f"{big}\0{end}\0".encode()) == (22, gen + b"\0\0")
    store.seed(f"{big}/one-more")
    kind, again = conn.call(22, f"{big}\0{end}\0".encode())
    assert kind == 22 and again.split(b"\0")[0] != gen and again.endswith(b"one-more\0\0")


@needs_c_clients
@standin_only("its command line")
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
def test_many_concurrent_c_clients(store: Store) -> None:
    many = f"{store.base}/many"
    procs = [
        subprocess.Popen(["xenstore-write", f"{many}/{i}", str(i), f"{many}/{i}-b", "b"])
        for i in range(24)
    ]
    assert [p.wait(timeout=10) for p in procs] == [0] * 24
    assert len(store.nodes(many)) == 1 + 48


# --- pyxs --------------------------------------------------------------------------------------


def test_pyxs_round_trip_list_exists_mkdir_delete(store: Store, client: pyxs.Client) -> None:
    q = f"{store.base}/q".encode()
    client.write(q + b"/a/b", b"value")
    assert client.read(q + b"/a/b") == b"value"
    assert client.read(q + b"/a") == b""
    client.mkdir(q + b"/dir/sub")
    client.mkdir(q + b"/dir")  # fine on an existing node
    assert client.list(q) == [b"a", b"dir"]
    assert client.list(q + b"/dir") == [b"sub"]
    assert client.exists(q + b"/a") and not client.exists(q + b"/zz")
    client.delete(q + b"/a")
    assert client.list(q) == [b"dir"]
    assert client.get_domain_path(0) == b"/local/domain/0"
    assert client.is_domain_introduced(0)
    assert not client.is_domain_introduced(32000)  # below DOMID_FIRST_RESERVED, never reached


def test_pyxs_errors_carry_the_errno(store: Store, client: pyxs.Client) -> None:
    nope = f"{store.base}/nope".encode()
    for call in (
        lambda: client.read(nope),
        lambda: client.delete(nope + b"/child"),
        lambda: client.set_perms(nope, [b"n0"]),
    ):
        with pytest.raises(pyxs.PyXSError) as failure:
            call()
        assert failure.value.args[0] == errno.ENOENT


def test_transaction_sees_its_own_view_and_others_see_it_on_commit(
    store: Store, client: pyxs.Client
) -> None:
    tx = f"{store.base}/tx".encode()
    with pyxs.Client(unix_socket_path=store.socket_path) as other:
        client.transaction()
        client.write(tx + b"/a", b"1")
        client.write(tx + b"/0", b"0")
        assert client.read(tx + b"/a") == b"1"
        assert not other.exists(tx)
        assert client.commit() is True
        assert other.read(tx + b"/a") == b"1"
        assert other.list(tx) == [b"a", b"0"]  # in order of creation
        client.transaction()
        client.delete(tx)
        client.rollback()
        assert other.read(tx + b"/a") == b"1"


def test_conflicting_transaction_fails_with_eagain(store: Store, client: pyxs.Client) -> None:
    c = f"{store.base}/c"
    store.seed(f"{c}/value", "0")
    with pyxs.Client(unix_socket_path=store.socket_path) as other:
        client.transaction()
        assert client.read(f"{c}/value".encode()) == b"0"
        other.write(f"{c}/value".encode(), b"theirs")
        client.write(f"{c}/other".encode(), b"mine")
        assert client.commit() is False
    assert store.nodes(c) == {c: "", f"{c}/value": "theirs"}
    client.transaction()  # the same work again, nothing in between: it commits
    client.write(f"{c}/other".encode(), b"mine")
    assert client.commit() is True
    client.transaction()  # a listing counts too
    assert client.list(c.encode()) == [b"value", b"other"]
    store.seed(f"{c}/third")
    assert client.commit() is False


def test_transactions_creating_siblings_conflict_through_the_parent(
    store: Store, client: pyxs.Client
) -> None:
    s = f"{store.base}/s"
    store.seed(s)
    with pyxs.Client(unix_socket_path=store.socket_path) as other:
        client.transaction()
        other.transaction()
        client.write(f"{s}/a".encode(), b"1")
        other.write(f"{s}/b".encode(), b"2")
        assert other.commit() is True
        assert client.commit() is False  # as xenstored: /s's children changed


@standin_only("its EAGAIN injection")
def test_eagain_commits_injection(
    store: Store, standin: XenstoredStandin, client: pyxs.Client
) -> None:
    x = f"{store.base}/i/x"
    standin.eagain_commits = 1
    client.transaction()
    client.write(x.encode(), b"1")
    assert client.commit() is False
    assert standin.eagain_commits == 0 and x not in standin.nodes()
    client.transaction()
    client.write(x.encode(), b"1")
    assert client.commit() is True


def test_pyxs_watch_events_and_seed_fires_them(store: Store, client: pyxs.Client) -> None:
    dom = f"{store.base}/domain/3".encode()
    monitor = client.monitor()
    monitor.watch(dom, b"tok")
    assert monitor.events.get(timeout=5) == (dom, b"tok")
    store.seed(f"{dom.decode()}/device/vif/0/state", "4")
    assert monitor.events.get(timeout=5) == (dom + b"/device/vif/0/state", b"tok")
    monitor.unwatch(dom, b"tok")
    store.seed(f"{dom.decode()}/x", "1")
    with pytest.raises(queue.Empty):
        monitor.events.get(timeout=0.1)


def test_many_concurrent_pyxs_clients_increment_a_counter_in_transactions(store: Store) -> None:
    counter = f"{store.base}/counter".encode()
    store.seed(counter.decode(), "0")
    clients, rounds = 12, 15

    def work() -> None:
        with pyxs.Client(unix_socket_path=store.socket_path) as c:
            for _ in range(rounds):
                while True:
                    c.transaction()
                    c.write(counter, str(int(c.read(counter)) + 1).encode())
                    if c.commit():
                        break

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert store.read(counter.decode()) == str(clients * rounds)
    if store.standin is not None:  # its request counter: every one of them reached it
        assert store.standin.requests >= clients * rounds * 4


# --- the wire, byte by byte -------------------------------------------------------------------


def test_wire_replies_as_xenstored(store: Store, raw: Callable[[], Raw]) -> None:
    conn = raw()
    w = store.base.encode() + b"/w"
    assert conn.call(11, w + b"/a\0value") == (11, b"OK\0")
    assert conn.call(2, w + b"/a\0") == (2, b"value")
    assert conn.call(1, w + b"\0") == (1, b"a\0")
    assert conn.call(1, w + b"/a\0") == (1, b"")
    assert conn.call(3, w + b"/a\0") == (3, b"n0\0")
    assert conn.call(2, w + b"/nope\0") == (16, b"ENOENT\0")
    assert conn.call(2, b"/bad//path\0") == (16, b"EINVAL\0")
    assert conn.call(2, w + b"/a") == (16, b"EINVAL\0")  # no NUL
    assert conn.call(13, b"/\0") == (16, b"EINVAL\0")
    assert conn.call(14, w + b"/a\0x1\0") == (16, b"EINVAL\0")
    assert conn.call(14, w + b"/a\0") == (16, b"EINVAL\0")  # a path and no perms
    assert conn.call(11, w + b"/a") == (16, b"EINVAL\0")  # WRITE: no NUL after the path
    assert conn.call(99, b"") == (16, b"ENOSYS\0")  # unknown type, as xenstored answers
    assert conn.call(15, b"") == (16, b"ENOSYS\0")
    assert conn.call(10, b"5\0") == (10, b"/local/domain/5\0")


@standin_only("its refusal of INTRODUCE (a real one would introduce the domain)")
def test_wire_introduce_needs_a_hypervisor(raw: Callable[[], Raw]) -> None:
    assert raw().call(8, b"1\x002\x003\x00") == (16, b"EINVAL\0")


def test_wire_transactions(store: Store, raw: Callable[[], Raw]) -> None:
    conn = raw()
    x = f"{store.base}/x".encode()
    kind, tx = conn.call(6, b"\0")
    assert kind == 6 and tx.endswith(b"\0") and tx[:-1].isdigit()
    tx_id = int(tx[:-1])
    assert conn.call(11, x + b"\x001", tx_id=tx_id) == (11, b"OK\0")
    assert conn.call(6, b"\0", tx_id=tx_id) == (16, b"EBUSY\0")
    assert conn.call(2, x + b"\0", tx_id=tx_id + 1000) == (16, b"ENOENT\0")
    assert conn.call(7, b"X\0", tx_id=tx_id) == (16, b"EINVAL\0")
    assert conn.call(7, b"T\0", tx_id=tx_id) == (7, b"OK\0")
    assert conn.call(7, b"T\0", tx_id=tx_id) == (16, b"ENOENT\0")  # it is over
    assert store.read(x.decode()) == "1"


def test_wire_transaction_commits_the_parents_its_write_created(
    store: Store, raw: Callable[[], Raw]
) -> None:
    conn = raw()
    a = f"{store.base}/a"
    tx_id = int(conn.call(6, b"\0")[1][:-1])
    assert conn.call(11, f"{a}/b/c\0v".encode(), tx_id=tx_id) == (11, b"OK\0")
    assert conn.call(7, b"T\0", tx_id=tx_id) == (7, b"OK\0")
    assert store.nodes(a) == {a: "", f"{a}/b": "", f"{a}/b/c": "v"}  # a directory walk finds them


def test_wire_watch_acks_then_fires_and_rejects_duplicates(
    store: Store, raw: Callable[[], Raw]
) -> None:
    conn = raw()
    w, rel = f"{store.base}/w".encode(), f"{store.rel}/rel".encode()
    assert conn.call(4, w + b"\0tok\0") == (4, b"OK\0")
    assert conn.frame() == (15, 0, 0, w + b"\0tok\0")  # after the ack, req_id 0
    assert conn.call(4, w + b"\0tok\0") == (16, b"EEXIST\0")
    assert conn.call(4, rel + b"\0t2\0") == (4, b"OK\0")
    assert conn.frame()[3] == rel + b"\0t2\0"  # relative watches get relative paths
    assert conn.call(11, rel + b"/x\x001") == (11, b"OK\0")
    assert conn.events == [rel + b"/x\0t2\0"]  # its own change: the event came before the ack
    assert conn.call(5, w + b"\0nope\0") == (16, b"ENOENT\0")
    assert conn.call(4, b"/bad//path\0t\0") == (16, b"EINVAL\0")  # check_watch_path()
    # do_unwatch() checked no path up to Xen 4.17: ENOENT, no such watch (the stand-in's answer);
    # from 4.18 its canonicalize() rejects the path first (Xen commit f174147e63): EINVAL
    unwatch = {(16, b"ENOENT\0"), (16, b"EINVAL\0")} if REAL else {(16, b"ENOENT\0")}
    assert conn.call(5, b"/bad//path\0t\0") in unwatch
    assert conn.call(4, w + b"\0") == (16, b"EINVAL\0")  # no token
    assert conn.call(21, b"") == (21, b"OK\0")  # RESET_WATCHES
    assert conn.call(5, w + b"\0tok\0") == (16, b"ENOENT\0")


@standin_only("its drop_after_requests and request counter")
def test_drop_after_requests_counts_every_connection(
    standin: XenstoredStandin, raw: Callable[[], Raw]
) -> None:
    first, second = raw(), raw()
    standin.requests = 0
    standin.drop_after_requests = 2
    assert first.call(2, b"/tool\0") == (2, b"")
    assert second.call(2, b"/tool\0") == (2, b"")
    with pytest.raises(ConnectionResetError):
        first.call(2, b"/tool\0")
    assert standin.drop_after_requests is None
    assert second.call(2, b"/tool\0") == (2, b"")
    assert standin.requests == 3 and standin.ops_log[-1] == ("READ", "/tool")


@standin_only("its stop() and socket cleanup")
def test_stop_closes_every_connection_and_removes_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    server = XenstoredStandin(path).start()
    raw = Raw(path)
    assert raw.call(2, b"/tool\0") == (2, b"")
    server.stop()
    assert not os.path.exists(path)
    assert raw.sock.recv(1) == b""
    raw.sock.close()
