"""A hotplug run as a sequence of named steps, and setup.

Setup keeps an undo journal: every change it makes pushes its inverse, and any failure (or kill
of the Python code by an exception) runs the journal backwards, so a failed setup leaves nothing
behind. Teardown (:mod:`.teardown`) runs the same steps' frame, undoing as much as it can.
Side effects go through :mod:`.netlink`, :mod:`.xenstore` and :mod:`.lock` only (and whether a
link exists, through :mod:`.ifindex`); decisions come from :mod:`.decide`. Setup imports netlink
and the lock where it runs, so that a teardown with nothing to undo, which imports this module,
imports neither (issue 11), nor contextlib and functools, which this module does without.
"""

from __future__ import annotations

import errno
import os

from .decide import live_claims, next_ifb_name, pick_ifb
from .errors import KernelError, NetbufError, NoFreeIfb, StepFailed
from .ifindex import link_exists
from .log import SECONDARY, log
from .xenstore import Xenstore, socket_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up: record.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .config import Config
    from .netlink import Netlink
    from .request import Request

KILL_AT_ENV = "REMUS_NETBUF_TEST_KILL_AT"  # test hook: SIGKILL ourselves when this step starts


class Run:
    """The state of one hotplug run: which step it is at and how to undo what it did."""

    def __init__(self, request: Request, environ: Mapping[str, str], ifb: str | None = None):
        self.request = request
        self.ifb = ifb
        self.step = "start"
        self.undo: list[tuple[str, Callable[[], object]]] = []
        self.kill_at = environ.get(KILL_AT_ENV)

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

    run = Run(request, environ)
    with run.at("connect to xenstore"), Xenstore(socket_path(environ)) as xs:
        with run.at("check vif"):
            if not link_exists(request.vif):
                raise KernelError(detail=f"vif {request.vif} does not exist")
        with run.at("open netlink"), Netlink() as nl:
            with run.at("check vif"):
                refuse_ifb_as_vif(nl, request.vif)
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


def refuse_ifb_as_vif(nl: Netlink, vif: str) -> None:
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
