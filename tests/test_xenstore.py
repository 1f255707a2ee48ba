"""The xenstore module over the real wire protocol, against the stand-in xenstored, with
Debian's C clients (libxenstore) as independent observers."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remus_netbuf import xswire
from remus_netbuf.decide import Claim
from remus_netbuf.errors import XenstoreError
from remus_netbuf.xenstore import TX_ATTEMPTS, Xenstore, socket_path
from tests.xenstored_standin import XenstoredStandin

needs_c_clients = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("xenstore-read", "xenstore-write", "xenstore-list")),
    reason="Debian's xenstore-utils (the libxenstore C clients) are not installed",
)


@pytest.fixture
def standin() -> Iterator[XenstoredStandin]:
    import tempfile

    sock = os.path.join(tempfile.mkdtemp(prefix="rnb-", dir="/tmp"), "xs.sock")
    with XenstoredStandin(sock) as server:
        yield server


@pytest.fixture
def xs(standin: XenstoredStandin) -> Iterator[Xenstore]:
    with Xenstore(standin.socket_path) as client:
        yield client


def test_read_write_remove(xs: Xenstore, standin: XenstoredStandin) -> None:
    xs.write("/libxl/3/remus/netbuf/0/ifb", "ifb0")
    assert xs.read("/libxl/3/remus/netbuf/0/ifb") == "ifb0"
    assert xs.read("/nope") is None
    xs.remove("/libxl/3/remus/netbuf/0/ifb")
    xs.remove("/libxl/3/remus/netbuf/0/ifb")  # twice: fine
    xs.remove("/no/such/parent")  # missing parent: also fine for us
    assert "/libxl/3/remus/netbuf/0/ifb" not in standin.nodes()


def test_values_are_sanitised_to_one_ascii_line(xs: Xenstore) -> None:
    xs.write("/t", "bad\nvalue é\x1b")
    assert xs.read("/t") == "bad value \\xe9\\x1b"


def test_claims_in_one_walk_and_live_domains(xs: Xenstore, standin: XenstoredStandin) -> None:
    standin.seed("/local/domain/3/name", "a")
    standin.seed("/local/domain/12/name", "b")
    standin.seed("/libxl/3/remus/netbuf/0/ifb", "ifb0")
    standin.seed("/libxl/3/remus/netbuf/1/ifb", "ifb1")
    standin.seed("/libxl/12/remus/netbuf/0/hotplug-status", "error")  # no claim
    standin.seed("/libxl/7/device/vif/0/x", "unrelated")
    standin.seed("/libxl/junk/remus/netbuf/0/ifb", "ifb9")  # not a domid: ignored
    before = standin.requests
    assert sorted(xs.claims(), key=lambda c: (c.domid, c.devid)) == [
        Claim(3, 0, "ifb0"),
        Claim(3, 1, "ifb1"),
    ]
    # 1 list of /libxl, 1 list per numeric domain (3, 7, 12), 1 read per netbuf (3/0, 3/1,
    # 12/0): no per-candidate scans.
    assert standin.requests - before == 1 + 3 + 3
    # Three round trips: every netbuf directory is asked for before any claim is read.
    verbs = [verb for verb, _ in standin.ops_log[-7:]]
    assert verbs == ["DIRECTORY"] * 4 + ["READ"] * 3
    assert xs.live_domids() == {3, 12}  # dom0 excluded


def test_claims_of_given_domains_skip_the_domain_listing(
    xs: Xenstore, standin: XenstoredStandin
) -> None:
    standin.seed("/libxl/3/remus/netbuf/0/ifb", "ifb0")
    standin.seed("/libxl/3/remus/netbuf/2/ifb", "ifb4")
    standin.seed("/libxl/4/remus/netbuf/0/ifb", "ifb1")
    before = standin.requests
    assert sorted(xs.claims([3, 9]), key=lambda c: c.devid) == [
        Claim(3, 0, "ifb0"),
        Claim(3, 2, "ifb4"),
    ]
    assert standin.requests - before == 2 + 2  # the two netbuf directories, the two claims


def test_transaction_retries_on_eagain(xs: Xenstore, standin: XenstoredStandin) -> None:
    standin.eagain_commits = 5
    calls = []
    xs.transaction(lambda tx: calls.append(tx.write("/claim", "ifb0")))
    assert len(calls) == 6
    assert standin.nodes()["/claim"] == "ifb0"


def test_transaction_gives_up_after_an_endless_storm(
    xs: Xenstore, standin: XenstoredStandin
) -> None:
    standin.eagain_commits = TX_ATTEMPTS
    with pytest.raises(XenstoreError, match="still conflicting"):
        xs.transaction(lambda tx: tx.write("/claim", "ifb0"))
    assert "/claim" not in standin.nodes()  # never half-written


def test_lost_connection_is_reopened_once(xs: Xenstore, standin: XenstoredStandin) -> None:
    xs.write("/a", "1")
    standin.drop_after_requests = 0
    assert xs.read("/a") == "1"
    standin.drop_after_requests = 1  # drop inside the transaction: it starts again
    xs.transaction(lambda tx: (tx.read("/a"), tx.write("/b", "2")))
    assert standin.nodes()["/b"] == "2"


def test_daemon_gone_is_an_error_not_a_hang(xs: Xenstore, standin: XenstoredStandin) -> None:
    standin.stop()
    started = time.monotonic()
    with pytest.raises(XenstoreError, match="cannot connect"):
        xs.read("/a")
    assert time.monotonic() - started < 10


def test_unreachable_socket(tmp_path: Path) -> None:
    with pytest.raises(XenstoreError, match="cannot connect to .*: No such file or directory"):
        with Xenstore(str(tmp_path / "absent.sock")):
            pass


def test_socket_path_order(monkeypatch: pytest.MonkeyPatch) -> None:
    assert socket_path({"XENSTORED_PATH": "/x/y"}) == "/x/y"
    monkeypatch.setattr("remus_netbuf.xenstore.os.path.exists", lambda p: p == "/dev/xen/xenbus")
    assert socket_path({}) == "/dev/xen/xenbus"
    monkeypatch.setattr("remus_netbuf.xenstore.os.path.exists", lambda p: True)
    assert socket_path({}) == "/var/run/xenstored/socket"
    monkeypatch.setattr("remus_netbuf.xenstore.os.path.exists", lambda p: False)
    assert socket_path({}) == "/var/run/xenstored/socket"


def test_a_close_that_fails_does_not_stop_the_reconnection(
    xs: Xenstore, standin: XenstoredStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing a connection the daemon dropped can fail (EBADF, xenbus's EIO): the run goes on
    with a new connection, and the last close of the run raises nothing either."""

    def close_fails(self: xswire.Connection) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    xs.write("/a", "1")
    monkeypatch.setattr(xswire.Connection, "close", close_fails)
    standin.drop_after_requests = 0
    assert xs.read("/a") == "1"
    standin.drop_after_requests = 1  # and inside a transaction, started again
    xs.transaction(lambda tx: (tx.read("/a"), tx.write("/b", "2")))
    assert standin.nodes()["/b"] == "2"
    xs.__exit__(None, None, None)


def test_xenstored_errors_are_named_with_their_errno(xs: Xenstore) -> None:
    with pytest.raises(
        XenstoreError, match=r"^xenstore: write /a//b: EINVAL \(Invalid argument\)$"
    ):
        xs.write("/a//b", "1")
    with pytest.raises(XenstoreError, match=r"bad path"):
        xs.read("/a\0/b")  # a NUL would split the path into two arguments on the wire
    with pytest.raises(XenstoreError, match=r"bad path"):
        xs.read("/é")


def test_an_abandoned_transaction_is_ended_and_its_writes_dropped(
    xs: Xenstore, standin: XenstoredStandin
) -> None:
    def body(tx: Xenstore) -> None:
        tx.write("/half", "written")
        raise RuntimeError("the body failed")

    with pytest.raises(RuntimeError):
        xs.transaction(body)
    assert "/half" not in standin.nodes()
    assert [op for op, _ in standin.ops_log[-3:]] == [
        "TRANSACTION_START",
        "WRITE",
        "TRANSACTION_END",
    ]
    assert xs.tx_id == 0
    xs.write("/after", "1")  # outside any transaction again
    assert standin.nodes()["/after"] == "1"


@needs_c_clients
def test_the_c_clients_read_what_we_write_and_we_read_theirs(
    xs: Xenstore, standin: XenstoredStandin
) -> None:
    env = {**os.environ, "XENSTORED_PATH": standin.socket_path}

    def c_client(*argv: str) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    xs.write("/libxl/3/remus/netbuf/0/ifb", "ifb0")
    xs.transaction(lambda tx: tx.write("/libxl/3/remus/netbuf/1/ifb", "ifb1"))
    assert c_client("xenstore-read", "/libxl/3/remus/netbuf/0/ifb") == "ifb0\n"
    assert c_client("xenstore-list", "/libxl/3/remus/netbuf") == "0\n1\n"
    c_client("xenstore-write", "/local/domain/3/name", "g3", "/libxl/4/remus/netbuf/0/ifb", "ifb2")
    assert xs.live_domids() == {3}
    assert sorted(c.ifb for c in xs.claims()) == ["ifb0", "ifb1", "ifb2"]
    c_client("xenstore-rm", "/libxl/3/remus/netbuf/0")
    assert xs.read("/libxl/3/remus/netbuf/0/ifb") is None
    xs.remove("/libxl/4")
    assert subprocess.run(["xenstore-exists", "/libxl/4"], env=env, timeout=10).returncode == 1
