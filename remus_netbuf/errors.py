"""The error hierarchy.

Every expected failure is a :class:`NetbufError`. Each subclass carries a message template filled
with keyword arguments, so the text an admin reads in ``hotplug-error`` is built in one place and
always names what it is about. The entry points turn any of them into one line on stderr, one
syslog line and (when the xenbus path is known) ``hotplug-error``, then exit 1. Anything else is a
bug: it is logged with its traceback.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up: record.py)
if TYPE_CHECKING:
    from typing import Any


class NetbufError(Exception):
    """Base of every expected failure; ``str()`` is the one-line reason."""

    template = "{detail}"

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        super().__init__(one_line(self.template.format(**fields)))


class BadRequest(NetbufError):
    """The invocation (command, environment, name=value arguments) is malformed."""

    template = "bad invocation: {detail}"


class ConfigError(NetbufError):
    """The configuration file is unreadable or holds an unknown key or bad value."""

    template = "config {source}: {detail}"


class KernelError(NetbufError):
    """A netlink request failed; ``detail`` says what the kernel answered."""


class KernelLacks(KernelError):
    """The kernel lacks a feature the netbuf needs (a module or a config option)."""

    template = "kernel has no {feature} ({config})"


class XenstoreError(NetbufError):
    """Xenstore is unreachable or refused a request."""

    template = "xenstore: {detail}"


class LockError(NetbufError):
    """The pickifb lock could not be taken safely."""

    template = "lock {path}: {detail}"


class NoFreeIfb(NetbufError):
    """Every IFB is busy and autocreation is off."""

    template = "no free IFB: {detail}"


class PlugError(NetbufError):
    """A plug control action failed (``ifb`` may name several IFBs: those that failed)."""

    template = "{ifb}: plug {action} failed: {detail}"


class EpochOutstanding(PlugError):
    """``buffer`` refused: an earlier epoch is not released yet, and sch_plug counts one only."""

    template = (
        "{ifb}: plug buffer refused: epoch {epoch} is not released yet; sch_plug counts one "
        "unreleased epoch, so a buffer now would let the next epoch's packets out with it "
        "(release_one first)"
    )


class StepFailed(NetbufError):
    """A hotplug step failed: the final one-line reason naming vif, IFB and step."""

    template = "{vif}: {command} failed at step '{step}' (ifb {ifb}): {detail}"


def one_line(text: str) -> str:
    """Fold any text into one printable ASCII line (xenstore and syslog take no more)."""
    flat = " ".join(text.split())
    return "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in flat)
