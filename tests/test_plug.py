"""The plug API without a kernel: the epoch guard against a model of sch_plug, and the batch.

``SchPlug`` is ``net/sched/sch_plug.c`` transcribed: its three counters, its pass-through
mode and its FIFO. A fake netlink session applies each batch to one model per IFB, so the
guard is checked against what the kernel would release, packet by packet.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remus_netbuf import plug as plug_module
from remus_netbuf.errors import EpochOutstanding, KernelError, PlugError
from remus_netbuf.netlink import Link, PlugFailure, QdiscStats
from remus_netbuf.plug import Epochs, Plug, PlugGroup
from tests.xenstored_standin import XenstoredStandin


@dataclass
class SchPlug:
    """sch_plug's state and its plug_change/enqueue/dequeue, packets labelled by epoch."""

    current: int = 0  # pkts_current_epoch
    last: int = 0  # pkts_last_epoch
    to_release: int = 0  # pkts_to_release
    unplugged: bool = False  # unplug_indefinite (plug_init: false, and throttled)
    queue: list[int] = field(default_factory=list)
    out: list[int] = field(default_factory=list)

    def enqueue(self, label: int) -> None:
        if not self.unplugged:
            self.current += 1
        self.queue.append(label)
        self.dequeue()

    def dequeue(self) -> None:
        while self.queue:
            if not self.unplugged:
                if not self.to_release:
                    return
                self.to_release -= 1
            self.out.append(self.queue.pop(0))

    def change(self, action: str) -> None:
        if action == "buffer":
            self.last, self.current = self.current, 0
            self.unplugged = False
        elif action == "release_one":
            self.to_release += self.last
            self.last = 0
        elif action == "release_indefinite":
            self.unplugged = True
            self.to_release = self.last = self.current = 0
        self.dequeue()

    def state(self) -> tuple[int, int, int, bool, int]:
        return self.current, self.last, self.to_release, self.unplugged, len(self.queue)


class FakeNetlink:
    """What PlugGroup uses of a Netlink session, over SchPlug models; records every batch."""

    def __init__(self, netns: str | None = None) -> None:
        self.kernel = {name: SchPlug() for name in ("ifb0", "ifb1", "ifb2")}
        self.kernel["eth0"] = SchPlug()
        self.batches: list[tuple[str, list[str]]] = []
        self.refuse: set[str] = set()
        self.closed = False
        FAKES.append(self)

    def link(self, name: str) -> Link | None:
        names = sorted(self.kernel)
        return Link(names.index(name) + 2, name, "ifb", True) if name in self.kernel else None

    def root_qdisc(self, name: str) -> str | None:
        return "pfifo" if name == "eth0" else "plug" if name in self.kernel else None

    def plug_batch(
        self, targets: Sequence[tuple[int, str]], action: str, limit: int = 0
    ) -> list[PlugFailure]:
        self.batches.append((action, [name for _, name in targets]))
        failures = []
        for _, name in targets:
            if name in self.refuse:
                failures.append(PlugFailure(name, 22, "Invalid qdisc name"))
            else:
                self.kernel[name].change(action)
        return failures

    def stats(self, name: str) -> QdiscStats | None:
        if name in self.refuse:
            return None
        q = len(self.kernel[name].queue)
        return QdiscStats("plug", 0, 0, q * 100, q, 0, 0, 0)

    def close(self) -> None:
        self.closed = True


FAKES: list[FakeNetlink] = []


@pytest.fixture(autouse=True)
def fake_netlink(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(plug_module, "Netlink", FakeNetlink)
    FAKES.clear()
    yield


def kernel_of(p: Plug | PlugGroup) -> FakeNetlink:
    return FAKES[-1]


# --- the hazard, in the model -------------------------------------------------------------


def test_unguarded_double_buffer_releases_unacknowledged_packets() -> None:
    """The issue's numbers: 2 packets in epoch 0, buffer, 5 in epoch 1, buffer, release_one."""
    with Plug("ifb0", guard=False) as plug:
        q = kernel_of(plug).kernel["ifb0"]
        for _ in range(2):
            q.enqueue(0)
        plug.buffer()
        for _ in range(5):
            q.enqueue(1)
        plug.buffer()
        plug.release_one()
        assert Counter(q.out) == {0: 2, 1: 3}  # 3 of epoch 1's packets escape


def test_guard_refuses_the_second_buffer_and_sends_nothing() -> None:
    with Plug("ifb0") as plug:
        q = kernel_of(plug).kernel["ifb0"]
        q.enqueue(0)
        q.enqueue(0)
        plug.buffer()
        for _ in range(5):
            q.enqueue(1)
        before, sent = q.state(), len(kernel_of(plug).batches)
        with pytest.raises(EpochOutstanding) as err:
            plug.buffer()
        assert str(err.value).startswith("ifb0: plug buffer refused: epoch 0 is not released yet")
        assert isinstance(err.value, PlugError)
        assert (q.state(), len(kernel_of(plug).batches)) == (before, sent)
        assert plug.release_one() == 0
        assert Counter(q.out) == {0: 2}
        plug.buffer()
        assert plug.release_one() == 1
        assert Counter(q.out) == {0: 2, 1: 5}


def test_release_one_with_nothing_unreleased_is_a_noop_that_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Plug("ifb0") as plug:
        with caplog.at_level("INFO", logger="remus_netbuf"):
            assert plug.release_one() is None
        assert kernel_of(plug).batches == []
        assert "ifb0: plug release_one: no epoch unreleased; nothing sent" in caplog.text
        plug.buffer()
        assert plug.release_one() == 0
        assert plug.release_one() is None
        assert [action for action, _ in kernel_of(plug).batches] == ["buffer", "release_one"]


def test_release_all_clears_and_the_next_buffer_leaves_nothing_unreleased() -> None:
    """After release_indefinite the kernel counts nothing, so the buffer that re-plugs closes
    an empty epoch: its count (0) may be overwritten, and the guard lets the next buffer by."""
    with Plug("ifb0") as plug:
        q = kernel_of(plug).kernel["ifb0"]
        plug.buffer()
        plug.release_all()
        assert plug.epochs == Epochs(open=1, outstanding=None, unplugged=True)
        q.enqueue(1)  # passes
        plug.buffer()  # re-plugs: epoch 1 (unbuffered) closes holding nothing
        assert plug.epochs == Epochs(open=2, outstanding=None, unplugged=False)
        q.enqueue(2)
        plug.buffer()
        q.enqueue(3)
        assert plug.release_one() == 2
        assert q.out == [1, 2]


def test_unguarded_plug_sends_every_action() -> None:
    with Plug("ifb0", guard=False) as plug:
        assert plug.release_one() is None
        plug.buffer()
        plug.buffer()
        actions = [action for action, _ in kernel_of(plug).batches]
        assert actions == ["release_one", "buffer", "buffer"]


OPS = st.lists(
    st.one_of(
        st.integers(min_value=1, max_value=4),  # the guest sends that many packets
        st.sampled_from(["buffer", "release_one", "release_all"]),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(OPS)
def test_guarded_plug_releases_exactly_the_released_epochs(ops: list[int | str]) -> None:
    """Whatever a checkpointer calls, what leaves the model kernel is exactly the packets of
    the epochs release_one returned, plus what release_all let out: never an unreleased one."""
    FAKES.clear()
    with Plug("ifb0") as plug:
        q = kernel_of(plug).kernel["ifb0"]
        sent: list[int] = []
        released: set[int] = set()
        free_upto = -1  # epochs up to this one were let out by release_all
        for op in ops:
            if isinstance(op, int):
                for _ in range(op):
                    sent.append(plug.epochs.open)
                    q.enqueue(plug.epochs.open)
            elif op == "buffer":
                before = q.state()
                try:
                    plug.buffer()
                except EpochOutstanding:
                    assert q.state() == before
            elif op == "release_one":
                epoch = plug.release_one()
                if epoch is not None:
                    released.add(epoch)
            else:
                plug.release_all()
                free_upto = plug.epochs.open
            allowed = [e for e in sent if e in released or e <= free_upto]
            assert Counter(q.out) == Counter(allowed)


# --- the group ----------------------------------------------------------------------------


def test_group_sends_one_batch_per_action_to_every_ifb() -> None:
    with PlugGroup(["ifb0", "ifb1", "ifb2"]) as group:
        nl = kernel_of(group)
        group.buffer()
        assert group.release_one() == {"ifb0": 0, "ifb1": 0, "ifb2": 0}
        group.release_all()
        group.set_limit(5000)
        assert nl.batches == [
            (action, ["ifb0", "ifb1", "ifb2"])
            for action in ("buffer", "release_one", "release_indefinite", "limit")
        ]
        assert set(group.stats()) == {"ifb0", "ifb1", "ifb2"}


def test_group_guard_names_the_ifbs_and_the_epoch() -> None:
    with PlugGroup(["ifb0", "ifb1"]) as group:
        group.buffer()
        with pytest.raises(EpochOutstanding, match=r"^ifb0, ifb1: plug buffer refused: epoch 0 "):
            group.buffer()
        assert len(kernel_of(group).batches) == 1


def test_group_failure_names_the_failed_ifbs_and_keeps_each_ifbs_guard_exact() -> None:
    with PlugGroup(["ifb0", "ifb1", "ifb2"]) as group:
        nl = kernel_of(group)
        nl.refuse = {"ifb1"}
        with pytest.raises(PlugError) as err:
            group.buffer()
        assert str(err.value) == (
            "ifb1: plug buffer failed: Invalid qdisc name (done on ifb0, ifb2)"
        )
        assert err.value.fields["failed"] == ["ifb1"]
        assert group.epochs["ifb1"] == Epochs()  # the kernel did not take it
        nl.refuse = set()
        assert group.release_one() == {"ifb0": 0, "ifb2": 0}  # only where an epoch is unreleased
        assert nl.batches[-1] == ("release_one", ["ifb0", "ifb2"])


def test_group_open_names_every_ifb_that_is_no_plug() -> None:
    with pytest.raises(PlugError) as err:
        PlugGroup(["ifb0", "eth0", "ifb9"])
    assert str(err.value) == (
        "eth0, ifb9: plug open failed: eth0: root qdisc is pfifo, not plug; "
        "ifb9: device ifb9 not found"
    )
    assert FAKES[-1].closed


@pytest.mark.parametrize("ifbs", [[], ["ifb0", "ifb1", "ifb0"]])
def test_group_needs_distinct_ifbs(ifbs: list[str]) -> None:
    """The same plug twice in one batch would be buffered twice: the hazard."""
    with pytest.raises(PlugError, match="need distinct IFBs"):
        PlugGroup(ifbs)


def test_group_stats_failure_names_the_ifb() -> None:
    with PlugGroup(["ifb0", "ifb1"]) as group:
        kernel_of(group).refuse = {"ifb0"}
        with pytest.raises(PlugError, match=r"^ifb0: plug stats failed: no plug qdisc any more"):
            group.stats()


def test_limit_out_of_range_sends_nothing() -> None:
    with PlugGroup(["ifb0", "ifb1"]) as group:
        with pytest.raises(PlugError, match=r"^ifb0, ifb1: plug limit failed: 0 is not"):
            group.set_limit(0)
        assert kernel_of(group).batches == []


def test_a_lost_answer_counts_a_buffer_as_done_but_not_a_release() -> None:
    """When the kernel's answer is lost, the guard assumes the worse for the next buffer."""

    def broken(*args: object, **kwargs: object) -> list[PlugFailure]:
        raise KernelError(detail="plug buffer on ifb0: no answer")

    with Plug("ifb0") as plug:
        kernel_of(plug).plug_batch = broken  # type: ignore[method-assign]
        with pytest.raises(PlugError, match="ifb0: plug buffer failed: plug buffer on ifb0"):
            plug.buffer()
        assert plug.epochs.outstanding == 0
        with pytest.raises(PlugError):
            plug.release_one()
        assert plug.epochs.outstanding == 0
        with pytest.raises(EpochOutstanding):
            plug.buffer()


# --- for_domain ---------------------------------------------------------------------------


@pytest.fixture
def standin() -> Iterator[XenstoredStandin]:
    sock = os.path.join(tempfile.mkdtemp(prefix="rnb-", dir="/tmp"), "xs.sock")
    with XenstoredStandin(sock) as server:
        yield server


def test_for_domain_takes_the_domains_claims_in_devid_order(standin: XenstoredStandin) -> None:
    standin.seed("/local/domain/5/name", "guest5")
    standin.seed("/libxl/5/remus/netbuf/1/ifb", "ifb0")
    standin.seed("/libxl/5/remus/netbuf/0/ifb", "ifb2")
    standin.seed("/libxl/6/remus/netbuf/0/ifb", "ifb1")  # another domain's
    with PlugGroup.for_domain(5, xenstore=standin.socket_path) as group:
        assert group.ifbs == ["ifb2", "ifb0"]
        group.buffer()
        assert kernel_of(group).batches == [("buffer", ["ifb2", "ifb0"])]


def test_for_domain_refuses_a_dead_domain_and_one_without_claims(
    standin: XenstoredStandin,
) -> None:
    standin.seed("/libxl/7/remus/netbuf/0/ifb", "ifb0")  # domain 7 is dead: a stale claim
    with pytest.raises(PlugError, match=r"^domain 7: plug open failed: no such live domain"):
        PlugGroup.for_domain(7, xenstore=standin.socket_path)
    standin.seed("/local/domain/8/name", "guest8")
    with pytest.raises(PlugError, match=r"^domain 8: plug open failed: no netbuf claims it"):
        PlugGroup.for_domain(8, xenstore=standin.socket_path)
    assert FAKES == []  # no netlink session was opened
