# remus-netbuf: every target prepares what it needs (Debian packages, .venv) itself.
PY := .venv/bin/python
SRC := remus_netbuf tests tools bench scripts/remus-netbuf-setup

.PHONY: all deps lint test e2e demo bench bench-native clean install uninstall
all: test

deps:
	@tools/ensure-deps

lint: deps
	.venv/bin/ruff check $(SRC)
	.venv/bin/ruff format --check $(SRC)
	.venv/bin/mypy

# The whole suite: lint, unit, native kernel and xenstore tests, and the kernel tier (sch_plug:
# Debian's kernel in QEMU, fetched once into .cache/vm, or this kernel where it has sch_plug).
test: lint
	$(PY) -m pytest --cov=remus_netbuf --cov-report=term-missing:skip-covered $(PYTEST_ARGS)

# The real-Xen tier: Debian's Xen 4.17 + a Debian dom0 in QEMU, xl remus running our script
# through real libxl, real xenstored and netback (docs/real-xen-tier.md). Fetches and
# builds what it needs into .cache/e2e once. XEN=4.20: trixie's Xen 4.20 and a trixie dom0 (its
# own root, kernel and Python 3.13), cached in .cache/e2e/4.20.
e2e: deps
	$(PY) -m tools.e2e $(if $(XEN),--xen $(XEN))

# The main job on an embedded default: a throwaway namespace, a veth guest, a private xenstore.
demo: deps
	$(PY) tools/demo.py

bench: deps
	$(PY) bench/bench.py

# Only the native figures (b): a minute or two, no VM.
bench-native: deps
	$(PY) bench/bench.py --native-only

# On a dom0, as root (README: Install): a venv in VENV, links in SBINDIR, man pages in MANDIR,
# XENDIR/xl.conf pointed at our script. WHEELS=DIR installs offline from wheels made elsewhere (pip wheel -w DIR '.[metrics]').
# Never on a development host: the tests run these in the kernel tier's VM. The system python3,
# whatever PATH says: the hotplug script must not depend on a pyenv or conda in someone's home.
INSTALL_PYTHON = /usr/bin/python3
VENV = /opt/remus-netbuf
SBINDIR = /usr/local/sbin
XENDIR = /etc/xen
MANDIR = /usr/local/share/man
INSTALL_ARGS = --prefix $(VENV) --sbindir $(SBINDIR) --xendir $(XENDIR) --mandir $(MANDIR) $(if $(WHEELS),--wheels $(WHEELS))

install:
	$(INSTALL_PYTHON) tools/install.py install $(INSTALL_ARGS)

uninstall:
	$(INSTALL_PYTHON) tools/install.py uninstall $(INSTALL_ARGS)

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage* .cache
