"""``remus-netbuf-setup``: the hotplug entry point libxl runs, and its failure reporting.

Every failure ends here as one line: on stderr (libxl appends it to xen-hotplug.log), in syslog,
and, when ``XENBUS_PATH`` is valid, in ``XENBUS_PATH/hotplug-error`` with
``hotplug-status=error``; the exit status is 1 and no traceback is shown for expected failures.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

from . import __version__
from .errors import ConfigError, NetbufError, StepFailed, one_line
from .log import SECONDARY, setup_logging
from .request import Request, parse_request, valid_xenbus_path

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("remus_netbuf")

USAGE = """\
usage: remus-netbuf-setup setup|teardown [vifname=V] [XENBUS_PATH=P] [REMUS_IFB=I]

The Remus network buffer hotplug script libxl runs for each vif of a protected guest.
Environment (or name=value arguments, which override it; parsed, never evaluated):
  vifname      the guest's vif in dom0, e.g. vif1.0
  XENBUS_PATH  /libxl/<domid>/remus/netbuf/<devid>
  REMUS_IFB    teardown only: the IFB libxl read from XENBUS_PATH/ifb
Config: $REMUS_NETBUF_CONF or /etc/xen/remus-netbuf.conf. Exit 0 on success, 1 on failure
(reason on stderr, in syslog and in XENBUS_PATH/hotplug-error).
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if args and args[0] == "--version":
        print(f"remus-netbuf-setup {__version__}")
        return 0
    setup_logging("remus-netbuf-setup")
    try:
        request = parse_request(args, os.environ)
    except NetbufError as err:
        return fail(str(err), valid_xenbus_path(args, os.environ), os.environ)
    return run(request, os.environ)


def run(request: Request, environ: Mapping[str, str]) -> int:
    """Carry out a validated request; the shared path of remus-netbuf-setup and remus-netbuf."""
    from .netbuf import setup, teardown

    try:
        if request.command == "setup":
            setup(request, read_config(request, environ), environ)
        else:  # it frees the guest before it reads the config
            teardown(request, partial(read_config, request, environ), environ)
    except NetbufError as err:
        return fail(str(err), request.xenbus_path, environ)
    except Exception as err:  # a bug: keep the traceback for the log, still report and exit 1
        log.exception("%s: internal error", request.vif)
        reason = f"{request.vif}: {request.command} failed: internal error: {type(err).__name__}"
        return fail(f"{reason}: {err}", request.xenbus_path, environ)
    return 0


def read_config(request: Request, environ: Mapping[str, str]) -> Config:
    """The configuration, or a failure of the step 'read config'."""
    from .config import load_config

    try:
        return load_config(environ)
    except ConfigError as err:
        raise StepFailed(
            vif=request.vif,
            command=request.command,
            step="read config",
            ifb=request.remus_ifb or "none",
            detail=str(err),
        ) from None


def fail(message: str, xenbus_path: str | None, environ: Mapping[str, str]) -> int:
    """Report a failure everywhere libxl and the admin look; returns the exit status, 1."""
    message = one_line(message)
    log.error("%s", message)
    if xenbus_path is not None:
        from .xenstore import Xenstore, socket_path

        try:
            with Xenstore(socket_path(environ)) as xs:
                xs.write(f"{xenbus_path}/hotplug-error", message)
                xs.write(f"{xenbus_path}/hotplug-status", "error")
        except NetbufError as err:
            log.error("could not write %s/hotplug-error: %s", xenbus_path, err, extra=SECONDARY)
    return 1


if __name__ == "__main__":
    sys.exit(main())
