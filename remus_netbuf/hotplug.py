"""``remus-netbuf-setup``: the hotplug entry point libxl runs, and its failure reporting.

Every failure ends here as one line: on stderr (libxl appends it to xen-hotplug.log), in syslog,
and, when ``XENBUS_PATH`` is valid, in ``XENBUS_PATH/hotplug-error`` with
``hotplug-status=error``; the exit status is 1 and no traceback is shown for expected failures.

Start-up is part of every hotplug run, so this module imports only what a path uses, where it
uses it: ``--version`` and ``--help`` load nothing more, and the pickifb lock is the standard
library's flock (tests/test_imports.py pins this). For the same reason the
records on the hotplug path are neither dataclasses (``dataclasses`` loads ``inspect`` and
writes each class's methods at import, ~8 ms of a 40 ms no-op teardown) nor NamedTuples
(``typing``): see record.py.
"""

from __future__ import annotations

import os
import sys

from . import __version__  # the package itself: nothing more to load

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .config import Config
    from .request import Request

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


def script() -> int:
    """The ``remus-netbuf-setup`` program: :func:`main`, then an exit that skips the
    interpreter's last full garbage collection. That collection walks every object the imports
    made, ~5 ms of a 40 ms run, to find nothing: every socket and file of ours is closed by
    then, and atexit handlers and the flushing of stdout and stderr still run."""
    import gc

    status = main()
    gc.freeze()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if args and args[0] == "--version":
        print(f"remus-netbuf-setup {__version__}")
        return 0
    from .errors import NetbufError
    from .log import setup_logging
    from .request import parse_request, valid_xenbus_path

    setup_logging("remus-netbuf-setup")
    try:
        request = parse_request(args, os.environ)
    except NetbufError as err:
        return fail(str(err), valid_xenbus_path(args, os.environ), os.environ)
    return run(request, os.environ)


def run(request: Request, environ: Mapping[str, str]) -> int:
    """Carry out a validated request; the shared path of remus-netbuf-setup and remus-netbuf."""
    from .errors import NetbufError
    from .log import log
    from .netbuf import setup
    from .teardown import teardown

    try:
        if request.command == "setup":
            setup(request, read_config(request, environ), environ)
        else:  # it frees the guest before it reads the config
            teardown(request, lambda: read_config(request, environ), environ)
    except NetbufError as err:
        return fail(str(err), request.xenbus_path, environ)
    except Exception as err:  # a bug: keep the traceback for the log, still report and exit 1
        log.exception("%s: internal error", request.vif)
        reason = f"{request.vif}: {request.command} failed: internal error: {type(err).__name__}"
        return fail(f"{reason}: {err}", request.xenbus_path, environ)
    return 0


def read_config(request: Request, environ: Mapping[str, str]) -> Config:
    """The configuration, or a failure of the step 'read config'.

    Setup needs all of it, and fails on any problem before it touches anything. Teardown needs
    ``lock_dir`` alone: a problem confined to another key is a warning naming file, line and
    key, so that a typo made while a netbuf is up never keeps its IFB claimed and plugged."""
    from .config import load_config
    from .errors import ConfigError, StepFailed
    from .log import log

    def ignore(err: ConfigError) -> None:
        key = err.fields["key"]
        log.warning(
            "%s: teardown: ignoring key %s (only lock_dir is needed): %s", request.vif, key, err
        )

    try:
        return load_config(environ, ignore if request.command == "teardown" else None)
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
    from .errors import NetbufError, one_line
    from .log import SECONDARY, log

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
    sys.exit(script())
