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


@pytest.hookimpl(tryfirst=True)  # before the kernel tier boots its VMs, which have no network
def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the wheels a selected test installs offline in the VM (tests/wheels.py)."""
    from tests import wheels
    from tools import vm

    if os.environ.get(vm.IN_VM) == "1" or session.config.option.collectonly:
        return
    if any(wheels.FIXTURE in getattr(item, "fixturenames", ()) for item in session.items):
        wheels.build()


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
