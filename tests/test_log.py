"""The package's logger: its own lines in our programs, the logging module in anyone else's."""

from __future__ import annotations

import logging
import syslog

import pytest

from remus_netbuf.log import DEBUG, INFO, LOGGER, SECONDARY, Log


def test_used_as_a_library_it_logs_through_the_logging_module(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = Log()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        log.info("%s: %s", "ifb0", "ip link set dev ifb0 up")
        log.log(DEBUG, "ifb0: tc qdisc change dev ifb0 root plug buffer")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (LOGGER, logging.INFO, "ifb0: ip link set dev ifb0 up"),
        (LOGGER, logging.DEBUG, "ifb0: tc qdisc change dev ifb0 root plug buffer"),
    ]


def test_in_our_programs_each_line_goes_to_stderr_and_syslog(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(syslog, "openlog", lambda *args: None)
    monkeypatch.setattr(syslog, "syslog", lambda priority, text: sent.append((priority, text)))
    log = Log()
    log.configure("remus-netbuf-setup", INFO, syslog=True)
    log.info("%s: teardown: %s", "vif1.0", "nothing to undo")
    log.debug("below the level: dropped")
    log.warning("xenstore: connection to %s lost; reconnecting", "/x")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("%s: internal error", "vif1.0")
    lines = capsys.readouterr().err.splitlines()
    assert lines[:3] == [
        "remus-netbuf-setup: vif1.0: teardown: nothing to undo",
        "remus-netbuf-setup: xenstore: connection to /x lost; reconnecting",
        "remus-netbuf-setup: vif1.0: internal error",
    ]
    assert lines[3] == "Traceback (most recent call last):" and lines[-1] == "RuntimeError: boom"
    assert [p for p, _ in sent] == [syslog.LOG_INFO, syslog.LOG_WARNING, syslog.LOG_ERR]
    assert sent[0][1] == "vif1.0: teardown: nothing to undo"
    assert sent[2][1].startswith("vif1.0: internal error\nTraceback")


def test_a_failing_syslog_never_fails_the_action(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(priority: int, text: str) -> None:
        raise OSError("no buffer space")

    monkeypatch.setattr(syslog, "openlog", lambda *args: None)
    monkeypatch.setattr(syslog, "syslog", full)
    log = Log()
    log.configure("remus-netbuf", INFO, syslog=True)
    log.error("still fine")


def test_a_secondary_failure_goes_to_syslog_only(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """extra=SECONDARY: the final one-line reason covers it, so stderr (which libxl keeps) has
    one line per failure; syslog still has it, and a library's logging sees the flag."""
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(syslog, "openlog", lambda *args: None)
    monkeypatch.setattr(syslog, "syslog", lambda priority, text: sent.append((priority, text)))
    log = Log()
    log.configure("remus-netbuf-setup", INFO, syslog=True)
    log.error("vif1.0: rollback: %s failed: %s", "remove plug", "busy", extra=SECONDARY)
    log.error("vif1.0: setup failed")
    assert capsys.readouterr().err.splitlines() == ["remus-netbuf-setup: vif1.0: setup failed"]
    assert sent == [
        (syslog.LOG_ERR, "vif1.0: rollback: remove plug failed: busy"),
        (syslog.LOG_ERR, "vif1.0: setup failed"),
    ]
    library = Log()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        library.error("secondary", extra=SECONDARY)
    assert [getattr(r, "secondary", False) for r in caplog.records] == [True]
