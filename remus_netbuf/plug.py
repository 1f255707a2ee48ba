"""The plug control API: what libxl does in C at every Remus epoch, for any checkpointer.

An epoch is the output of the guest between two checkpoints. The protocol, per epoch::

    plug.buffer()        # checkpoint i starts: mark the end of epoch i-1's output
    ...                  # guest runs; its packets queue behind the mark
    plug.release_one()   # checkpoint i is safe on the backup: release up to the first mark

``release_all()`` unplugs until the next ``buffer()`` (failover, or Remus stopping), and
``set_limit()`` changes how many bytes the plug may hold before it drops.

**sch_plug counts one unreleased epoch.** ``buffer`` moves the open epoch's packet count into
a single slot (``pkts_last_epoch``) and ``release_one`` releases that many packets from the head
of the queue. A second ``buffer`` before that ``release_one`` overwrites the slot, and the older
epoch's packets are then released by the newer epoch's count: 2 packets in epoch 0, ``buffer``,
5 in epoch 1, ``buffer``, ``release_one``, and 5 packets leave, 3 of them epoch 1's, whose
checkpoint nobody acknowledged. Output commit is broken without a word from the kernel. libxl
never pipelines checkpoints, so it never meets this; a pipelined checkpointer would.

**The epoch guard.** A plug keeps the kernel's accounting as it drove it (:class:`Epochs`):

- ``buffer()`` while an epoch is unreleased raises :class:`EpochOutstanding` and sends nothing;
- ``release_one()`` with nothing unreleased sends nothing and returns None (the kernel would
  release nothing either);
- ``release_all()`` clears it. The plug then passes packets without counting them, so the next
  ``buffer()`` closes an epoch that holds nothing and leaves nothing unreleased, as in the kernel.

The kernel's state cannot be read back (sch_plug reports only generic counters, which
``stats()`` returns). A plug object starts from what setup leaves, a plug holding with nothing
unreleased, and cannot see another process driving the same plug (libxl, ``remus-netbuf
plug``): give each plug one driver. ``guard=False`` is the escape hatch: every action is sent as
asked, for callers that track epochs themselves, such as the CLI (one action per process).

:class:`PlugGroup` drives all of a domain's IFBs at once: each action is one write carrying one
request per IFB, so the vifs' epoch marks are set within one system call.

    with Plug("ifb0") as plug:
        plug.buffer()
        plug.release_one()
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import EpochOutstanding, KernelError, PlugError
from .log import log
from .netlink import Netlink, QdiscStats


@dataclass
class Epochs:
    """One plug's epoch accounting, as sch_plug keeps it, for the actions this process sent.

    ``open`` is the epoch the packets arriving now belong to; ``outstanding`` the closed epoch
    not yet released (the kernel's ``pkts_last_epoch``), or None; ``unplugged`` is true after
    ``release_all``, while packets pass uncounted.
    """

    open: int = 0
    outstanding: int | None = None
    unplugged: bool = False

    def buffered(self) -> None:
        self.outstanding = None if self.unplugged else self.open
        self.open += 1
        self.unplugged = False

    def released_one(self) -> int | None:
        released, self.outstanding = self.outstanding, None
        return released

    def released_all(self) -> None:
        self.outstanding = None
        self.unplugged = True


class PlugGroup:
    """The root plugs of several IFBs (a domain's), driven together over one netlink session.

    Each action is one write with one ``RTM_NEWQDISC`` per IFB, and every ack is read back; a
    failure names the IFBs the kernel refused, and those it did not. The guard is kept per IFB,
    so after a partial failure each IFB still gets only what its own plug can take.
    """

    def __init__(self, ifbs: Sequence[str], netns: str | None = None, guard: bool = True) -> None:
        self.ifbs = list(ifbs)
        self.guard = guard
        named = ", ".join(self.ifbs) or "no IFB"
        if not self.ifbs or len(set(self.ifbs)) < len(self.ifbs):
            # The same plug twice in one batch would be buffered twice: the hazard itself.
            raise PlugError(ifb=named, action="open", detail="need distinct IFBs, at least one")
        self.epochs = {ifb: Epochs() for ifb in self.ifbs}
        try:
            self._nl = Netlink(netns)
        except KernelError as err:
            raise PlugError(ifb=named, action="open", detail=str(err)) from None
        self._index: dict[str, int] = {}
        failures = {}
        for ifb in self.ifbs:
            try:
                self._index[ifb] = self._plug_index(ifb)
            except KernelError as err:
                failures[ifb] = str(err)
        if failures:
            self._nl.close()
            raise _failed("open", failures, [])

    @classmethod
    def for_domain(
        cls,
        domid: int,
        netns: str | None = None,
        xenstore: str | None = None,
        guard: bool = True,
    ) -> PlugGroup:
        """The plugs of every netbuf domain ``domid`` claims in xenstore, in devid order.

        ``xenstore`` is xenstored's socket (default: as the hotplug script finds it). A domain
        that is not live is refused: its claims may be stale, and their IFBs another's now.
        """
        from .xenstore import Xenstore, socket_path

        with Xenstore(xenstore or socket_path(os.environ)) as xs:
            live = domid in xs.live_domids()
            claims = xs.claims([domid]) if live else []
        if not live:
            raise PlugError(ifb=f"domain {domid}", action="open", detail="no such live domain")
        if not claims:
            raise PlugError(ifb=f"domain {domid}", action="open", detail="no netbuf claims it")
        return cls([c.ifb for c in sorted(claims, key=lambda c: c.devid)], netns, guard)

    def __enter__(self) -> PlugGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._nl.close()

    def buffer(self) -> None:
        """Start a new epoch on every IFB: packets from now on stay queued behind this mark.

        Refused, with nothing sent, while an earlier epoch is unreleased (unless unguarded).
        """
        held = {ifb: e.outstanding for ifb, e in self.epochs.items() if e.outstanding is not None}
        if self.guard and held:
            epochs = ", ".join(sorted({str(epoch) for epoch in held.values()}))
            raise EpochOutstanding(ifb=", ".join(held), action="buffer", epoch=epochs)
        self._send("buffer", self.ifbs)

    def release_one(self) -> dict[str, int]:
        """Release the unreleased epoch: everything queued before the first buffer mark.

        Returns the epoch released, per IFB; empty (and nothing sent) when no epoch was
        unreleased. Unguarded, the release is sent to every IFB regardless.
        """
        due = [ifb for ifb, e in self.epochs.items() if e.outstanding is not None]
        if not due and self.guard:
            log.info(
                "%s: plug release_one: no epoch unreleased; nothing sent", ", ".join(self.ifbs)
            )
            return {}
        done = self._send("release_one", due if self.guard else self.ifbs)
        return {ifb: epoch for ifb, epoch in done.items() if epoch is not None}

    def release_all(self) -> None:
        """Unplug: release everything and let packets pass unbuffered until the next buffer()."""
        self._send("release_indefinite", self.ifbs)

    def set_limit(self, limit: int) -> None:
        """Bytes each plug may hold; beyond that new packets are dropped (counted in stats)."""
        if not 0 < limit < 2**32:
            detail = f"{limit} is not 1..2^32-1 bytes"
            raise PlugError(ifb=", ".join(self.ifbs), action="limit", detail=detail)
        self._send("limit", self.ifbs, limit)

    def stats(self) -> dict[str, QdiscStats]:
        """Each plug's counters (their buffering state is not readable from the kernel)."""
        found, failures = {}, {}
        for ifb in self.ifbs:
            try:
                stats = self._nl.stats(ifb)
            except KernelError as err:
                failures[ifb] = str(err)
                continue
            if stats is None or stats.kind != "plug":
                failures[ifb] = "no plug qdisc any more"
            else:
                found[ifb] = stats
        if failures:
            raise _failed("stats", failures, list(found))
        return found

    def _send(self, action: str, ifbs: Sequence[str], limit: int = 0) -> dict[str, int | None]:
        """Send ``action`` to ``ifbs`` in one batch and account for it on the IFBs that took it
        (for release_one: the epoch each released). Raises PlugError naming the IFBs that did
        not take it, and those that did."""
        if not ifbs:
            return {}
        targets = [(self._index[ifb], ifb) for ifb in ifbs]
        try:
            failures = {f.ifb: f.reason for f in self._nl.plug_batch(targets, action, limit)}
        except KernelError as err:
            # The socket failed: what the kernel did is unknown. Count a buffer as done (the
            # guard then wants a release_one, which at worst releases nothing), anything else
            # as not done (a release_one again, a buffer refused): never a double buffer.
            if action == "buffer":
                for ifb in ifbs:
                    self.epochs[ifb].buffered()
            raise _failed(action, dict.fromkeys(ifbs, str(err)), []) from None
        done = {ifb: self._account(ifb, action) for ifb in ifbs if ifb not in failures}
        if failures:
            raise _failed(action, failures, list(done))
        return done

    def _account(self, ifb: str, action: str) -> int | None:
        epochs = self.epochs[ifb]
        if action == "buffer":
            epochs.buffered()
        elif action == "release_one":
            return epochs.released_one()
        elif action == "release_indefinite":
            epochs.released_all()
        return None

    def _plug_index(self, ifb: str) -> int:
        link = self._nl.link(ifb)
        if link is None:
            raise KernelError(detail=f"device {ifb} not found")
        root = self._nl.root_qdisc(ifb)
        if root != "plug":
            raise KernelError(detail=f"root qdisc is {root or 'the default'}, not plug")
        return link.ifindex


class Plug:
    """One IFB's root plug qdisc, over one netlink session (cheap to drive every epoch).

    A :class:`PlugGroup` of one, with the same guard: see the module's documentation.
    """

    def __init__(self, ifb: str, netns: str | None = None, guard: bool = True) -> None:
        self.ifb = ifb
        self._group = PlugGroup([ifb], netns, guard)

    def __enter__(self) -> Plug:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._group.close()

    @property
    def epochs(self) -> Epochs:
        """The epoch accounting: the open epoch, the unreleased one."""
        return self._group.epochs[self.ifb]

    def buffer(self) -> None:
        """Start a new epoch: packets from now on stay queued behind this mark. Raises
        :class:`EpochOutstanding`, sending nothing, while an earlier epoch is unreleased."""
        self._group.buffer()

    def release_one(self) -> int | None:
        """Release the unreleased epoch (everything before the first buffer mark) and return
        its number; None, with nothing sent, when no epoch is unreleased."""
        return self._group.release_one().get(self.ifb)

    def release_all(self) -> None:
        """Unplug: release everything and let packets pass unbuffered until the next buffer()."""
        self._group.release_all()

    def set_limit(self, limit: int) -> None:
        """Bytes the plug may hold; beyond that new packets are dropped (counted in stats)."""
        self._group.set_limit(limit)

    def stats(self) -> QdiscStats:
        """The plug's counters (its buffering state itself is not readable from the kernel)."""
        return self._group.stats()[self.ifb]


def _failed(action: str, failures: dict[str, str], done: list[str]) -> PlugError:
    """One error naming the IFBs that failed (grouped by reason) and those that did not."""
    by_reason: dict[str, list[str]] = {}
    for ifb, reason in failures.items():
        by_reason.setdefault(reason, []).append(ifb)
    if len(by_reason) == 1:
        detail = next(iter(by_reason))
    else:
        detail = "; ".join(f"{', '.join(ifbs)}: {reason}" for reason, ifbs in by_reason.items())
    if done:
        detail += f" (done on {', '.join(done)})"
    return PlugError(ifb=", ".join(failures), action=action, detail=detail, failed=list(failures))
