"""Teardown: undo a netbuf, idempotently, freeing the guest first.

It undoes as much as it can, step by step (the steps of :class:`.netbuf.Run`), and reports what
it could not. A teardown with nothing to undo asks whether the vif exists, reads the config and
one xenstore node, and removes two: it imports neither netlink nor the lock, which the runs that
use them import where they do, nor contextlib and functools (issue 11).
"""

from __future__ import annotations

from .decide import live_claims, plan_teardown
from .errors import StepFailed
from .ifindex import link_exists
from .log import SECONDARY, log
from .netbuf import Run, refuse_ifb_as_vif
from .xenstore import Xenstore, socket_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up: record.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import TypeVar

    from .config import Config
    from .netlink import Netlink
    from .request import Request

    T = TypeVar("T")


def teardown(request: Request, config: Callable[[], Config], environ: Mapping[str, str]) -> None:
    """Undo the netbuf of ``request``: idempotent, and never touches another claim's IFB.

    The guest is freed first: the vif's ingress (and so its redirect into the plug) goes before
    the config is read and before xenstore is asked anything, so that neither a broken config
    nor a lost xenstored leaves the guest's output held. Later failures are still reported.
    """
    run = Run(request, environ, ifb=request.remus_ifb)
    path = request.xenbus_path
    problems: list[tuple[str, str]] = []
    with NetlinkWhenNeeded(run) as netlink:
        if link_exists(request.vif):
            nl = netlink()
            with run.at("check vif"):
                refuse_ifb_as_vif(nl, request.vif)
            # The vif is this netbuf's alone: no lock needed to stop its redirect.
            _attempt(run, "remove ingress qdisc", lambda: nl.remove_ingress(request.vif), problems)
        lock_dir = config().lock_dir
        with run.at("connect to xenstore"), Xenstore(socket_path(environ)) as xs:
            _release_claim(run, netlink, xs, lock_dir, problems)
            status, error = f"{path}/hotplug-status", f"{path}/hotplug-error"
            _attempt(run, "remove hotplug-status", lambda: xs.remove(status), problems)
            _attempt(run, "remove hotplug-error", lambda: xs.remove(error), problems)
    if problems:
        run.step, detail = problems[0]
        more = f" (+{len(problems) - 1} more failed steps)" if len(problems) > 1 else ""
        raise run.failure(detail + more)


def _release_claim(
    run: Run,
    netlink: NetlinkWhenNeeded,
    xs: Xenstore,
    lock_dir: str,
    problems: list[tuple[str, str]],
) -> None:
    """Free the claimed IFB and drop the claim, as :func:`.decide.plan_teardown` decides."""
    request, path = run.request, run.request.xenbus_path
    with run.at("read claim"):
        own = xs.read(f"{path}/ifb")
    run.ifb = request.remus_ifb or own
    # Without a claim, REMUS_IFB is looked at: the claim may have gone with /libxl/<domid>
    # (xl destroy, forced failover) before libxl ran us, the IFB still plugged.
    look = own is None and request.remus_ifb is not None and link_exists(request.remus_ifb)
    ours = look and _remus_ifb_has_our_plug(run, netlink(), problems)
    plan = plan_teardown(request.remus_ifb, own, (), remus_ifb_ours=ours)
    if plan.remove_claim or plan.free_ifb is not None:
        from .lock import pickifb_lock

        # Freeing the IFB and dropping the claim happen together under the lock, so that
        # no setup sees the IFB free while it is still plugged, or claimed while it is free.
        with run.at("take pickifb lock"), pickifb_lock(lock_dir):
            with run.at("read claims"):
                claims = live_claims(xs.claims(), xs.live_domids())
                others = {c.ifb for c in claims if c.path != path}
            if ours:  # looked at again, now that no setup can change it
                ours = _remus_ifb_has_our_plug(run, netlink(), problems)
            plan = plan_teardown(request.remus_ifb, own, others, remus_ifb_ours=ours)
            free = plan.free_ifb
            if free is not None and link_exists(free):
                nl = netlink()  # failing to open it fails the teardown here: the claim stays
                _attempt(run, "free IFB", lambda: nl.free_ifb(free), problems)
            if plan.remove_claim:
                _attempt(run, "remove claim", lambda: xs.remove(f"{path}/ifb"), problems)
    log.info("%s: teardown: %s", request.vif, plan.why)


class NetlinkWhenNeeded:
    """A teardown's netlink session, opened (and netlink imported) when first needed: a run
    with nothing to undo needs neither. Closed at the end of the ``with`` block."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.session: Netlink | None = None

    def __enter__(self) -> NetlinkWhenNeeded:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.session is not None:
            self.session.close()

    def __call__(self) -> Netlink:
        if self.session is None:
            from .netlink import Netlink

            with self.run.at("open netlink"):
                self.session = Netlink()
        return self.session


def _remus_ifb_has_our_plug(run: Run, nl: Netlink, problems: list[tuple[str, str]]) -> bool:
    """Whether REMUS_IFB is an IFB whose root qdisc is a netbuf's plug (see netlink); a
    failure to look is a problem reported, and the IFB left alone."""
    from .netlink import has_our_plug

    ifb = run.request.remus_ifb
    assert ifb is not None
    return has_our_plug(_attempt(run, "look at REMUS_IFB", lambda: nl.ifb(ifb), problems))


def _attempt(
    run: Run, step: str, action: Callable[[], T], problems: list[tuple[str, str]]
) -> T | None:
    """One teardown step; a failure is logged and kept, and the teardown goes on (None)."""
    try:
        with run.at(step):
            return action()
    except StepFailed as err:
        log.error("%s", err, extra=SECONDARY)  # the final line reports it, counted
        problems.append((step, err.fields["detail"]))
        return None
