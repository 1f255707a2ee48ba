"""Shared test configuration.

The kernel tier (tests/vmtier.py) runs ``@pytest.mark.vm`` tests on a kernel with sch_plug.
"""

# --- kernel tier: keep this block as it is; add other fixtures below it --------------------
pytest_plugins = ["tests.vmtier"]
# ------------------------------------------------------------------------------------------
