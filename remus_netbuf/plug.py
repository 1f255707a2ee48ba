"""The plug control API: what libxl does in C at every Remus epoch, for any checkpointer.

An epoch is the output of the guest between two checkpoints. The protocol, per epoch::

    plug.buffer()        # checkpoint i starts: mark the end of epoch i-1's output
    ...                  # guest runs; its packets queue behind the mark
    plug.release_one()   # checkpoint i is safe on the backup: release up to the first mark

``release_all()`` unplugs until the next ``buffer()`` (failover, or Remus stopping), and
``set_limit()`` changes how many bytes the plug may hold before it drops.

The plug's own state -- whether it is buffering, where its marks are -- cannot be read back from
the kernel: sch_plug reports only generic qdisc counters. ``stats()`` returns those (backlog
bytes and packets, drops, requeues, overlimits); keep track of the epochs yourself.

    with Plug("ifb0") as plug:
        plug.buffer()
        plug.release_one()
"""

from __future__ import annotations

from .errors import KernelError, PlugError
from .netlink import Netlink, QdiscStats


class Plug:
    """One IFB's root plug qdisc, over one netlink session (cheap to drive every epoch)."""

    def __init__(self, ifb: str, netns: str | None = None) -> None:
        self.ifb = ifb
        self._nl = Netlink(netns)
        try:
            link = self._nl.link(ifb)
            if link is None:
                raise KernelError(detail=f"device {ifb} not found")
            root = self._nl.root_qdisc(ifb)
            if root != "plug":
                raise KernelError(detail=f"root qdisc is {root or 'the default'}, not plug")
        except KernelError as err:
            self._nl.close()
            raise PlugError(ifb=ifb, action="open", detail=str(err)) from None
        self._index = link.ifindex

    def __enter__(self) -> Plug:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._nl.close()

    def buffer(self) -> None:
        """Start a new epoch: packets from now on stay queued behind this mark."""
        self._act("buffer")

    def release_one(self) -> None:
        """Release the oldest epoch: everything queued before the first buffer mark."""
        self._act("release_one")

    def release_all(self) -> None:
        """Unplug: release everything and let packets pass unbuffered until the next buffer()."""
        self._act("release_indefinite")

    def set_limit(self, limit: int) -> None:
        """Bytes the plug may hold; beyond that new packets are dropped (counted in stats)."""
        if not 0 < limit < 2**32:
            raise PlugError(ifb=self.ifb, action="limit", detail=f"{limit} is not 1..2^32-1 bytes")
        self._act("limit", limit)

    def stats(self) -> QdiscStats:
        """The plug's counters (its buffering state itself is not readable from the kernel)."""
        try:
            stats = self._nl.stats(self.ifb)
        except KernelError as err:
            raise PlugError(ifb=self.ifb, action="stats", detail=str(err)) from None
        if stats is None or stats.kind != "plug":
            raise PlugError(ifb=self.ifb, action="stats", detail="no plug qdisc any more")
        return stats

    def _act(self, action: str, limit: int = 0) -> None:
        try:
            self._nl.plug_index(self._index, self.ifb, action, limit)
        except KernelError as err:
            raise PlugError(ifb=self.ifb, action=action, detail=str(err)) from None
