"""Shared test configuration.

The UML tier (tests/umltier.py) runs ``@pytest.mark.uml`` tests inside User-Mode Linux.
"""

# --- UML tier: keep this block as it is; add other fixtures below it ----------------------
pytest_plugins = ["tests.umltier"]
# ------------------------------------------------------------------------------------------
