"""Logging: one line per step to stderr (libxl appends it to xen-hotplug.log) and to syslog.

Syslog uses facility daemon, as Xen's hotplug scripts do, and only when ``/dev/log`` exists.
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER = "remus_netbuf"
DEV_LOG = "/dev/log"
# ``extra=SECONDARY``: a failure the final one-line reason already covers (a rollback step, a
# teardown step, hotplug-error that could not be written): syslog only, so that stderr, which
# libxl keeps, has exactly one line per failure.
SECONDARY = {"secondary": True}


def _primary(record: logging.LogRecord) -> bool:
    return not getattr(record, "secondary", False)


class _Syslog(logging.Handler):
    """Send records to syslog(3), facility daemon (the C module: no socket code of ours)."""

    def __init__(self, ident: str) -> None:
        import syslog

        super().__init__()
        self._syslog = syslog
        syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_DAEMON)

    def emit(self, record: logging.LogRecord) -> None:
        priority = {
            logging.DEBUG: self._syslog.LOG_DEBUG,
            logging.INFO: self._syslog.LOG_INFO,
            logging.WARNING: self._syslog.LOG_WARNING,
        }.get(record.levelno, self._syslog.LOG_ERR)
        try:
            self._syslog.syslog(priority, self.format(record))
        except Exception:  # logging must never break the hotplug action
            self.handleError(record)


def setup_logging(program: str, level: int = logging.INFO) -> logging.Logger:
    """Configure the package logger once for a program run; returns it."""
    logger = logging.getLogger(LOGGER)
    logger.handlers.clear()
    logger.setLevel(level)
    logger.propagate = False
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter(f"{program}: %(message)s"))
    stderr.addFilter(_primary)
    logger.addHandler(stderr)
    if os.path.exists(DEV_LOG):
        syslog = _Syslog(program)
        syslog.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(syslog)
    return logger
