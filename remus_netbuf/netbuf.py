"""The two hotplug actions, setup and teardown, as sequences of named steps.

Setup keeps an undo journal: every change it makes pushes its inverse, and any failure (or kill
of the Python code by an exception) runs the journal backwards, so a failed setup leaves nothing
behind. Teardown undoes as much as it can, step by step, and reports what it could not.
Side effects go through :mod:`.netlink`, :mod:`.xenstore` and :mod:`.lock` only (and whether a
link exists, through :mod:`.ifindex`); decisions come from :mod:`.decide`.

A teardown with nothing to undo asks whether the vif exists, reads the config and one xenstore
node, and removes two: it imports neither netlink nor the lock, which the runs that use them
import where they do, nor contextlib and functools, which this module does without (issue 11).
"""

from __future__ import annotations

import errno
import os

from .decide import live_claims, next_ifb_name, pick_ifb, plan_teardown
from .errors import KernelError, NetbufError, NoFreeIfb, StepFailed
from .ifindex import link_exists
from .log import SECONDARY, log
from .xenstore import Xenstore, socket_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up: record.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import TypeVar

    from .config import Config
    from .netlink import Netlink
    from .request import Request

    T = TypeVar("T")

KILL_AT_ENV = "REMUS_NETBUF_TEST_KILL_AT"  # test hook: SIGKILL ourselves when this step starts


class Run:
    """The state of one hotplug run: which step it is at and how to undo what it did."""

    def __init__(self, request: Request, ifb: str | None = None, kill_at: str | None = None):
        self.request = request
        self.ifb = ifb
        self.step = "start"
        self.undo: list[tuple[str, Callable[[], object]]] = []
        self.kill_at = kill_at

    def at(self, step: str) -> Step:
        """Start a step, run in a ``with`` block; a NetbufError inside becomes StepFailed
        naming vif, IFB and step."""
        self.step = step
        if self.kill_at == step:
            # SIGKILL by its number: importing signal (and with it enum) would make the setups
            # that make bench kills here slower than the real ones it stands for
            os.kill(os.getpid(), 9)
        return Step(self)

    def failure(self, detail: str) -> StepFailed:
        return StepFailed(
            vif=self.request.vif,
            command=self.request.command,
            step=self.step,
            ifb=self.ifb or "none",
            detail=detail,
        )

    def rollback(self) -> list[str]:
        """Undo in reverse order; returns what could not be undone."""
        failed = []
        while self.undo:
            what, action = self.undo.pop()
            log.info("%s: rollback: %s", self.request.vif, what)
            try:
                action()
            except NetbufError as err:
                log.error(
                    "%s: rollback: %s failed: %s", self.request.vif, what, err, extra=SECONDARY
                )
                failed.append(f"{what}: {err}")
        return failed


class Step:
    """The ``with`` block of :meth:`Run.at`."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: object, err: object, traceback: object) -> None:
        if isinstance(err, NetbufError) and not isinstance(err, StepFailed):
            raise self.run.failure(str(err)) from None


def setup(request: Request, config: Config, environ: Mapping[str, str]) -> str:
    """Install the netbuf for ``request.vif``; returns the IFB it uses."""
    from .lock import pickifb_lock
    from .netlink import Netlink

    run = Run(request, kill_at=environ.get(KILL_AT_ENV))
    with run.at("connect to xenstore"), Xenstore(socket_path(environ)) as xs:
        with run.at("check vif"):
            if not link_exists(request.vif):
                raise KernelError(detail=f"vif {request.vif} does not exist")
        with run.at("open netlink"), Netlink() as nl:
            with run.at("check vif"):
                _refuse_ifb_as_vif(nl, request.vif)
            whole = _whole_netbuf(run, xs, nl)
            if whole is not None:
                log.info("%s: netbuf already whole on %s: nothing to change", request.vif, whole)
                _publish(run, xs)
                return whole
            try:
                with run.at("take pickifb lock"), pickifb_lock(config.lock_dir):
                    was_up = _claim_ifb(run, config, xs, nl)
                ifb = run.ifb
                assert ifb is not None
                _install(run, config, xs, nl, ifb, was_up)
            except BaseException as err:
                failed = run.rollback()  # while netlink and xenstore are still open
                if isinstance(err, StepFailed) and failed:
                    raise run.failure(
                        f"{err.fields['detail']}; rollback incomplete: {'; '.join(failed)}"
                    ) from None
                raise
    log.info("%s: netbuf ready: ingress redirected to %s, plugged", request.vif, ifb)
    return ifb


def _install(run: Run, config: Config, xs: Xenstore, nl: Netlink, ifb: str, was_up: bool) -> None:
    """Plug the claimed IFB, redirect the vif into it, publish: each step with its undo."""
    vif = run.request.vif
    with run.at("silence IFB"):
        _silence(run, nl, ifb, was_up)
    with run.at("bring IFB up"):
        nl.set_up(ifb, True)
        if not was_up:
            run.undo.append((f"bring {ifb} down", lambda: nl.set_up(ifb, False)))
    with run.at("add plug qdisc"):
        nl.add_plug(ifb, config.plug_limit)  # the kernel refuses it over a root of someone's
        if was_up:
            run.undo.append((f"remove plug from {ifb}", lambda: nl.remove_plug(ifb)))
        else:  # down first, then the plug: left fresh, with no default qdisc attached
            run.undo[-1] = (f"free {ifb} (down, then unplug)", lambda: nl.free_ifb(ifb))
    with run.at("add ingress qdisc"):
        nl.add_ingress(vif)
        run.undo.append((f"remove ingress of {vif}", lambda: nl.remove_ingress(vif)))
    with run.at("add redirect filter"):
        nl.add_redirect(vif, ifb, config.protocols)
    _publish(run, xs)


def _silence(run: Run, nl: Netlink, ifb: str, was_up: bool) -> None:
    """Make ``ifb`` send nothing of its own: once up, an IFB with IPv6 makes a link-local
    address, and its DAD, router solicitations and MLD reports go out through its root qdisc,
    into the plug, counted with the guest's packets. With addrgenmode none it makes no address,
    so it sends none of them. An IFB that is up already has made its address: it goes down
    first (which drops it), and comes up again in the next step."""
    link = nl.link(ifb)
    old = None if link is None else link.addr_gen_mode
    if old is None or old == "none":
        return  # no IPv6 on it, so nothing to send; or silent already
    if was_up:
        nl.set_up(ifb, False)
        run.undo.append((f"bring {ifb} down and up again", lambda: _bounce(nl, ifb)))
    nl.set_addr_gen_mode(ifb, "none")
    run.undo.append((f"set {ifb} addrgenmode {old} again", lambda: nl.set_addr_gen_mode(ifb, old)))


def _bounce(nl: Netlink, ifb: str) -> None:
    """Down and up again: an IFB that was up gets its IPv6 address back, as it had it."""
    nl.set_up(ifb, False)
    nl.set_up(ifb, True)


def _publish(run: Run, xs: Xenstore) -> None:
    with run.at("publish to xenstore"):
        # libxl takes any hotplug-error as failure: drop a stale one from an earlier run.
        xs.remove(f"{run.request.xenbus_path}/hotplug-error")
        xs.write(f"{run.request.xenbus_path}/hotplug-status", "connected")


def _refuse_ifb_as_vif(nl: Netlink, vif: str) -> None:
    link = nl.link(vif)
    if link is not None and link.kind == "ifb":
        raise KernelError(detail=f"vifname {vif} is an IFB, not a vif: refusing")


def _whole_netbuf(run: Run, xs: Xenstore, nl: Netlink) -> str | None:
    """The IFB of this path's claim if that netbuf is whole already (its IFB plugged, the vif
    redirecting to it): a setup run again has nothing to change, as a teardown run again."""
    with run.at("read claim"):
        claim = xs.read(f"{run.request.xenbus_path}/ifb")
        if claim is None:
            return None
        ifb = nl.ifb(claim)
        if ifb is None or ifb.root_qdisc != "plug":
            return None
        if claim not in {r.ifb for r in nl.redirects(run.request.vif)}:
            return None
    run.ifb = claim
    return claim


def _claim_ifb(run: Run, config: Config, xs: Xenstore, nl: Netlink) -> bool:
    """Pick a free IFB (creating one if allowed) and claim it; called under the lock.

    Returns whether the IFB was up already (a new one is down). Creating ``ifbN`` can load the
    ifb module, which makes its own ``numifbs`` IFBs (the kernel's default is 2; systemd ships
    0) before our request meets the name it just made: EEXIST. Then the pick is made again,
    once, from the links as they are now, where the module's own IFBs are free.
    """
    name, create, was_up = _pick(run, config, xs, nl, again=False)
    if create and not _create(run, nl, name, exists_ok=True):
        log.info(
            "%s: %s exists now (the ifb module, loaded by that request, makes its own): "
            "picking again",
            run.request.vif,
            name,
        )
        name, create, was_up = _pick(run, config, xs, nl, again=True)
        if create:
            _create(run, nl, name, exists_ok=False)
    return was_up


def _pick(
    run: Run, config: Config, xs: Xenstore, nl: Netlink, again: bool
) -> tuple[str, bool, bool]:
    """Pick an IFB and write the claim, in one transaction: (IFB, whether it must be created,
    whether it was up). The first pick's claim is undone on failure; a second pick's replaces
    it, and the same undo serves."""
    path = run.request.xenbus_path
    with run.at("pick IFB"):
        name, create, was_up, old = xs.transaction(_chooser(run, config, nl))
        run.ifb = name
        if again:
            log.info("%s: claimed %s (%s/ifb) instead", run.request.vif, name, path)
        elif old is None:
            run.undo.append((f"remove claim {path}/ifb", lambda: xs.remove(f"{path}/ifb")))
            log.info("%s: claimed %s (%s/ifb)", run.request.vif, name, path)
        else:  # an earlier claim of this path, not whole: replaced, and restored on failure
            run.undo.append(
                (f"restore claim {path}/ifb = {old}", lambda: xs.write(f"{path}/ifb", old))
            )
            log.info("%s: claimed %s (%s/ifb, was %s)", run.request.vif, name, path, old)
    return name, create, was_up


def _create(run: Run, nl: Netlink, name: str, exists_ok: bool) -> bool:
    """Create the IFB ``name``; False if the kernel says it exists and ``exists_ok``."""
    with run.at("create IFB"):
        try:
            nl.create_ifb(name)
        except KernelError as err:
            if exists_ok and err.fields.get("code") == errno.EEXIST:
                return False
            raise
        run.undo.append((f"delete {name}", lambda: nl.delete_link(name)))
    return True


def _chooser(
    run: Run, config: Config, nl: Netlink
) -> Callable[[Xenstore], tuple[str, bool, bool, str | None]]:
    """The transaction body that picks an IFB and writes the claim: (IFB, whether it must be
    created, whether it was up, the claim it replaced)."""
    path = run.request.xenbus_path
    names = nl.link_names()

    def choose_and_claim(tx: Xenstore) -> tuple[str, bool, bool, str | None]:
        old = tx.read(f"{path}/ifb")
        claims = tx.claims()
        live = tx.live_domids()
        choice = pick_ifb(names, claims, live, path, nl.ifb)
        name, create = choice.ifb, False
        if name is None:
            if not config.ifb_autocreate:
                raise NoFreeIfb(detail=f"{choice.reason}; ifb_autocreate is off")
            taken = names | {c.ifb for c in live_claims(claims, live)}
            name, create = next_ifb_name(taken), True
        tx.write(f"{path}/ifb", name)
        return name, create, choice.up, old

    return choose_and_claim


def teardown(request: Request, config: Callable[[], Config], environ: Mapping[str, str]) -> None:
    """Undo the netbuf of ``request``: idempotent, and never touches another claim's IFB.

    The guest is freed first: the vif's ingress (and so its redirect into the plug) goes before
    the config is read and before xenstore is asked anything, so that neither a broken config
    nor a lost xenstored leaves the guest's output held. Later failures are still reported.
    """
    run = Run(request, ifb=request.remus_ifb, kill_at=environ.get(KILL_AT_ENV))
    path = request.xenbus_path
    problems: list[tuple[str, str]] = []
    with NetlinkWhenNeeded(run) as netlink:
        if link_exists(request.vif):
            nl = netlink()
            with run.at("check vif"):
                _refuse_ifb_as_vif(nl, request.vif)
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
