"""Shared test configuration.

The kernel tier (tests/vmtier.py) runs ``@pytest.mark.vm`` tests on a kernel with sch_plug.
"""

# --- kernel tier: keep this block as it is; add other fixtures below it --------------------
pytest_plugins = ["tests.vmtier"]
# ------------------------------------------------------------------------------------------

import os  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402

if TYPE_CHECKING:
    from tests.bed import Bed
    from tests.forkrun import Runner


XEN_CACHE = "xen_cache"  # the fixture of tests that read the real-Xen tier's cache
_xen_cache_problem: list[str] = []  # why the session hook could not fill it


@pytest.hookimpl(tryfirst=True)  # before the kernel tier boots its VMs, which have no network
def pytest_collection_finish(session: pytest.Session) -> None:
    """Fetch and build what selected tests need, as the kernel tier fetches its kernel: the
    wheels a test installs offline in the VM (tests/wheels.py), the Debian package (tools/deb.py:
    about 30 s, or two minutes more to apt-get its build dependencies; a look when dist/ holds it
    already), and the real-Xen tier's cache of Debian's Xen with libxenlight rebuilt
    (tools/xenpkg.py: about a minute cold, a look when warm)."""
    from tests import wheels
    from tools import deb, vm

    if os.environ.get(vm.IN_VM) == "1" or session.config.option.collectonly:
        return
    fixtures = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if wheels.FIXTURE in fixtures:
        wheels.build()
    if deb.FIXTURE in fixtures:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        deb.build_for_session(reporter.write_line if reporter is not None else lambda _: None)
    if XEN_CACHE in fixtures:
        _fill_xen_cache(session.config)


def _fill_xen_cache(config: pytest.Config) -> None:
    from tools import xenpkg

    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def say(line: str) -> None:
        if reporter is not None:
            reporter.write_line(f"xenpkg: {line}")

    try:
        xenpkg.ensure(xenpkg.CACHE, say)
    except Exception as err:  # reported by each test that needed it, as its failure
        _xen_cache_problem.append(f"{type(err).__name__}: {err}")


@pytest.fixture
def xen_cache() -> Path:
    """The real-Xen tier's cache (tools/xenpkg.py), filled by the session hook; a test that
    needs it fails, with the reason, when it could not be filled."""
    from tools import xenpkg

    if not (xenpkg.CACHE / "versions.json").exists():
        why = "; ".join(_xen_cache_problem) or "the session hook did not run"
        pytest.fail(f"no real-Xen tier cache in {xenpkg.CACHE}: {why}", pytrace=False)
    return xenpkg.CACHE


@pytest.fixture(autouse=True)
def _package_log_restored() -> Iterator[None]:
    """A test that runs one of our programs in-process (``cli.main``) configures the package's
    logger for a program run; put it back, so later tests see the library's logging again."""
    from remus_netbuf.log import log

    saved = dict(vars(log))
    yield
    vars(log).clear()
    vars(log).update(saved)


@pytest.fixture
def bed(tmp_path: Path) -> Iterator["Bed"]:
    """A private network namespace with the stand-in xenstored (tests/bed.py), torn down after."""
    from tests.bed import make_bed

    yield from make_bed(tmp_path)


@pytest.fixture
def runner(bed: "Bed") -> Iterator["Runner"]:
    """Runs our programs against ``bed`` as libxl does, each a fork of the test process
    (tests/forkrun.py)."""
    from tests.forkrun import Runner

    with Runner(bed) as run:
        yield run
