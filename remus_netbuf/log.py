"""Logging: one line per step to stderr (libxl appends it to xen-hotplug.log) and to syslog.

Syslog uses facility daemon, as Xen's hotplug scripts do, and only when ``/dev/log`` exists.

Every module logs through :data:`log`. A program of ours (``remus-netbuf-setup``,
``remus-netbuf``) calls :func:`setup_logging`, and from then on each line is written here,
without the ``logging`` module: importing it (traceback, threading, string...) cost ~5 ms of a
40 ms hotplug run. Used as a library (the plug API), the package logs through
``logging.getLogger("remus_netbuf")`` as Python programs expect, and the host program's
configuration applies.
"""

from __future__ import annotations

import os
import sys

LOGGER = "remus_netbuf"
DEV_LOG = "/dev/log"
# ``extra=SECONDARY``: a failure the final one-line reason already covers (a rollback step, a
# teardown step, hotplug-error that could not be written): syslog only, so that stderr, which
# libxl keeps, has exactly one line per failure.
SECONDARY: dict[str, object] = {"secondary": True}
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40  # logging's levels
Extra = dict[str, object] | None  # logging's ``extra``: SECONDARY or None


class Log:
    """The package's logger: the methods of a ``logging.Logger`` that the package uses."""

    def __init__(self) -> None:
        self._program: str | None = None  # None: not one of our programs; use logging
        self._level = INFO
        self._syslog = False

    def configure(self, program: str, level: int, syslog: bool) -> None:
        self._program, self._level, self._syslog = program, level, syslog
        if syslog:
            import syslog as _syslog

            _syslog.openlog(program, _syslog.LOG_PID, _syslog.LOG_DAEMON)

    def set_level(self, level: int) -> None:
        """Drop lines below ``level`` from now on (the ``logging`` logger's, used as a library)."""
        self._level = level
        if self._program is None:
            import logging

            logging.getLogger(LOGGER).setLevel(level)

    def debug(self, msg: str, *args: object, extra: Extra = None) -> None:
        self.log(DEBUG, msg, *args, extra=extra)

    def info(self, msg: str, *args: object, extra: Extra = None) -> None:
        self.log(INFO, msg, *args, extra=extra)

    def warning(self, msg: str, *args: object, extra: Extra = None) -> None:
        self.log(WARNING, msg, *args, extra=extra)

    def error(self, msg: str, *args: object, extra: Extra = None) -> None:
        self.log(ERROR, msg, *args, extra=extra)

    def exception(self, msg: str, *args: object, extra: Extra = None) -> None:
        """An error with the traceback of the exception being handled."""
        self.log(ERROR, msg, *args, exc_info=True, extra=extra)

    def log(
        self, level: int, msg: str, *args: object, exc_info: bool = False, extra: Extra = None
    ) -> None:
        """One line: to stderr unless ``extra`` marks it SECONDARY, and to syslog."""
        if self._program is None:
            import logging

            logging.getLogger(LOGGER).log(level, msg, *args, exc_info=exc_info, extra=extra)
            return
        if level < self._level:
            return
        text = msg % args if args else msg
        if exc_info:
            import traceback

            text += "\n" + traceback.format_exc().rstrip("\n")
        secondary = extra is not None and bool(extra.get("secondary"))
        try:  # logging must never break the hotplug action
            if not secondary:  # stderr: exactly one line per failure
                sys.stderr.write(f"{self._program}: {text}\n")
                sys.stderr.flush()
        except (OSError, ValueError):
            pass
        if self._syslog:
            self._to_syslog(level, text)

    def _to_syslog(self, level: int, text: str) -> None:
        """syslog(3), facility daemon (the C module: no socket code of ours)."""
        import syslog

        priority = {
            DEBUG: syslog.LOG_DEBUG,
            INFO: syslog.LOG_INFO,
            WARNING: syslog.LOG_WARNING,
        }.get(level, syslog.LOG_ERR)
        try:
            syslog.syslog(priority, text)
        except Exception:  # as above: a full /dev/log must not fail the action
            pass


log = Log()


def setup_logging(program: str, level: int = INFO) -> Log:
    """Configure the package's logging once for a run of ``program``; returns the logger."""
    log.configure(program, level, syslog=os.path.exists(DEV_LOG))
    return log
