"""Whether a link exists: libc's ``if_nametoindex``, an ioctl in the caller's namespace.

Apart from :mod:`.netlink`, which opens no socket for it either, because it is all a teardown
with nothing to undo asks of the kernel, and that run should load no netlink code for it, nor
``socket``: the C ``_socket`` module has the call, and ``socket`` adds ``enum`` and
``selectors`` to it (~3 ms of start-up, issue 11).
"""

from __future__ import annotations

from _socket import if_nametoindex


def link_exists(name: str) -> bool:
    """Whether the caller's namespace has a link called ``name`` (no netlink socket)."""
    try:
        if_nametoindex(name)
    except OSError:
        return False
    return True
