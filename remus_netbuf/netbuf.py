"""The two hotplug actions, setup and teardown, as sequences of named steps.

Setup keeps an undo journal: every change it makes pushes its inverse, and any failure (or kill
of the Python code by an exception) runs the journal backwards, so a failed setup leaves nothing
behind. Teardown undoes as much as it can, step by step, and reports what it could not.
Side effects go through :mod:`.netlink`, :mod:`.xenstore` and :mod:`.lock` only; decisions come
from :mod:`.decide`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from functools import partial

from .config import Config
from .decide import live_claims, next_ifb_name, pick_ifb, plan_teardown
from .errors import KernelError, NetbufError, NoFreeIfb, StepFailed
from .lock import pickifb_lock
from .log import log
from .netlink import Netlink, link_exists
from .request import Request
from .xenstore import Xenstore, socket_path

KILL_AT_ENV = "REMUS_NETBUF_TEST_KILL_AT"  # test hook: SIGKILL ourselves when this step starts


class Run:
    """The state of one hotplug run: which step it is at and how to undo what it did."""

    def __init__(self, request: Request, ifb: str | None = None, kill_at: str | None = None):
        self.request = request
        self.ifb = ifb
        self.step = "start"
        self.undo: list[tuple[str, Callable[[], object]]] = []
        self.kill_at = kill_at

    @contextmanager
    def at(self, step: str) -> Iterator[None]:
        """Run a step; a NetbufError inside becomes StepFailed naming vif, IFB and step."""
        self.step = step
        if self.kill_at == step:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        try:
            yield
        except StepFailed:
            raise
        except NetbufError as err:
            raise self.failure(str(err)) from None

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
                log.error("%s: rollback: %s failed: %s", self.request.vif, what, err)
                failed.append(f"{what}: {err}")
        return failed


def setup(request: Request, config: Config, environ: Mapping[str, str]) -> str:
    """Install the netbuf for ``request.vif``; returns the IFB it uses."""
    run = Run(request, kill_at=environ.get(KILL_AT_ENV))
    with run.at("connect to xenstore"), Xenstore(socket_path(environ)) as xs:
        with run.at("check vif"):
            if not link_exists(request.vif):
                raise KernelError(detail=f"vif {request.vif} does not exist")
        with run.at("open netlink"), Netlink() as nl:
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
    with run.at("bring IFB up"):
        nl.set_up(ifb, True)
        if not was_up:
            run.undo.append((f"bring {ifb} down", lambda: nl.set_up(ifb, False)))
    with run.at("add plug qdisc"):
        nl.add_plug(ifb, config.plug_limit)
        run.undo.append((f"remove plug from {ifb}", lambda: nl.remove_plug(ifb)))
    with run.at("add ingress qdisc"):
        nl.add_ingress(vif)
        run.undo.append((f"remove ingress of {vif}", lambda: nl.remove_ingress(vif)))
    with run.at("add redirect filter"):
        nl.add_redirect(vif, ifb, config.protocols)
    with run.at("publish to xenstore"):
        # libxl takes any hotplug-error as failure: drop a stale one from an earlier run.
        xs.remove(f"{run.request.xenbus_path}/hotplug-error")
        xs.write(f"{run.request.xenbus_path}/hotplug-status", "connected")


def _claim_ifb(run: Run, config: Config, xs: Xenstore, nl: Netlink) -> bool:
    """Pick a free IFB (creating one if allowed) and claim it; called under the lock.

    Returns whether the IFB was up already (a new one is down)."""
    path = run.request.xenbus_path
    with run.at("pick IFB"):
        names = nl.link_names()

        def choose_and_claim(tx: Xenstore) -> tuple[str, bool, bool]:
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
            return name, create, choice.up

        name, create, was_up = xs.transaction(choose_and_claim)
        run.ifb = name
        run.undo.append((f"remove claim {path}/ifb", lambda: xs.remove(f"{path}/ifb")))
        log.info("%s: claimed %s (%s/ifb)", run.request.vif, name, path)
    if create:
        with run.at("create IFB"):
            nl.create_ifb(name)
            run.undo.append((f"delete {name}", lambda: nl.delete_link(name)))
    return was_up


def teardown(request: Request, config: Config, environ: Mapping[str, str]) -> None:
    """Undo the netbuf of ``request``: idempotent, and never touches another claim's IFB."""
    run = Run(request, ifb=request.remus_ifb, kill_at=environ.get(KILL_AT_ENV))
    path = request.xenbus_path
    problems: list[tuple[str, str]] = []
    with run.at("connect to xenstore"), Xenstore(socket_path(environ)) as xs, ExitStack() as stack:
        with run.at("read claim"):
            own = xs.read(f"{path}/ifb")
        run.ifb = request.remus_ifb or own
        plan = plan_teardown(request.remus_ifb, own, ())
        nl = None
        if link_exists(request.vif) or (plan.free_ifb is not None and link_exists(plan.free_ifb)):
            with run.at("open netlink"):
                nl = stack.enter_context(Netlink())
        if nl is not None:  # the vif is this netbuf's alone: no lock needed to stop its redirect
            _attempt(run, "remove ingress qdisc", partial(nl.remove_ingress, request.vif), problems)
        if plan.remove_claim:
            # Freeing the IFB and dropping the claim happen together under the lock, so that
            # no setup sees the IFB free while it is still plugged, or claimed while it is free.
            with run.at("take pickifb lock"), pickifb_lock(config.lock_dir):
                with run.at("read claims"):
                    others = {
                        c.ifb for c in live_claims(xs.claims(), xs.live_domids()) if c.path != path
                    }
                plan = plan_teardown(request.remus_ifb, own, others)
                if nl is not None and plan.free_ifb is not None and link_exists(plan.free_ifb):
                    _free_ifb(run, nl, plan.free_ifb, problems)
                _attempt(run, "remove claim", partial(xs.remove, f"{path}/ifb"), problems)
        log.info("%s: teardown: %s", request.vif, plan.why)
        for node in ("hotplug-status", "hotplug-error"):
            _attempt(run, f"remove {node}", partial(xs.remove, f"{path}/{node}"), problems)
    if problems:
        run.step, detail = problems[0]
        more = f" (+{len(problems) - 1} more failed steps)" if len(problems) > 1 else ""
        raise run.failure(detail + more)


def _free_ifb(run: Run, nl: Netlink, ifb: str, problems: list[tuple[str, str]]) -> None:
    _attempt(run, "remove plug qdisc", partial(nl.remove_plug, ifb), problems)
    _attempt(run, "bring IFB down", partial(nl.set_up, ifb, False), problems)


def _attempt(
    run: Run, step: str, action: Callable[[], object], problems: list[tuple[str, str]]
) -> None:
    """One teardown step; a failure is logged and kept, and the teardown goes on."""
    try:
        with run.at(step):
            action()
    except StepFailed as err:
        log.error("%s", err)
        problems.append((step, err.fields["detail"]))
