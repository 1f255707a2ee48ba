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
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40  # logging's levels


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

    def debug(self, msg: str, *args: object) -> None:
        self.log(DEBUG, msg, *args)

    def info(self, msg: str, *args: object) -> None:
        self.log(INFO, msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self.log(WARNING, msg, *args)

    def error(self, msg: str, *args: object) -> None:
        self.log(ERROR, msg, *args)

    def exception(self, msg: str, *args: object) -> None:
        """An error with the traceback of the exception being handled."""
        self.log(ERROR, msg, *args, exc_info=True)

    def log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        if self._program is None:
            import logging

            logging.getLogger(LOGGER).log(level, msg, *args, exc_info=exc_info)
            return
        if level < self._level:
            return
        text = msg % args if args else msg
        if exc_info:
            import traceback

            text += "\n" + traceback.format_exc().rstrip("\n")
        try:  # logging must never break the hotplug action
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
