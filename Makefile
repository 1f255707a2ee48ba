# remus-netbuf: every target prepares what it needs (Debian packages, .venv) itself.
PY := .venv/bin/python
SRC := remus_netbuf tests tools bench scripts/remus-netbuf-setup

.PHONY: all deps lint test test-py pythons e2e demo bench bench-native matrix clean install uninstall deb xen-netbuf-debs
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

# The unit and native tests (all but the kernel tier) under another Debian suite's Python, in a
# debootstrapped root made once into .cache/pyroot/SUITE (tools/pyroot.py; docs/testing.md):
# trixie has 3.13, sid 3.14. Lint and the kernel tier stay with make test. make -k pythons: both,
# sid even when trixie fails.
SUITE = trixie
test-py: test-py-$(SUITE)
pythons: test-py-trixie test-py-sid
test-py-%: deps
	$(PY) -m tools.pyroot --suite $* $(if $(PYTEST_ARGS),-- $(PYTEST_ARGS))

# The real-Xen tier: Debian's Xen 4.17 + a Debian dom0 in QEMU, xl remus running our script
# through real libxl, real xenstored and netback (docs/real-xen-tier.md). Fetches and
# builds what it needs into .cache/e2e once. XEN=4.20: trixie's Xen 4.20 and a trixie dom0 (its
# own root, kernel and Python 3.13), cached in .cache/e2e/4.20.
e2e: deps
	$(PY) -m tools.e2e $(if $(XEN),--xen $(XEN))

# Every stack our users run (kernels 6.1/6.12/7.2, Pythons 3.11/3.13/3.14, Xen 4.17; 4.20 only
# with REMUS_NETBUF_MATRIX_ONLY=e2e-4.20: docs/real-xen-tier.md), each tier on it, then one table
# (tools/matrix.py; each part's log in .cache/matrix).
matrix: deps
	$(PY) -m tools.matrix

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
# Quoted: WHEELS may be in a checkout whose path has a space (tests/test_install_vm.py).
INSTALL_ARGS = --prefix '$(VENV)' --sbindir '$(SBINDIR)' --xendir '$(XENDIR)' --mandir '$(MANDIR)' $(if $(WHEELS),--wheels '$(WHEELS)')

install:
	$(INSTALL_PYTHON) tools/install.py install $(INSTALL_ARGS)

uninstall:
	$(INSTALL_PYTHON) tools/install.py uninstall $(INSTALL_ARGS)

# dist/remus-netbuf_<version>-1_all.deb (with its .changes, .buildinfo and lintian's output),
# built with debhelper and pybuild in a copy under .cache/deb; the build dependencies and
# lintian are installed with apt-get if missing (tools/deb.py). FORCE=1 builds even when dist/
# holds the package of these sources already.
deb:
	$(INSTALL_PYTHON) tools/deb.py $(if $(FORCE),--force)

# dist/xen-netbuf/libxenmisc<X>_<V>+netbuf1_amd64.deb: Debian's package of libxenlight, rebuilt
# from Debian's source of exactly V with libnl3 (network buffering for xl remus), for the Xen
# installed here, or XEN=4.17|4.20 (tools/xendebs.py; docs/install.md). Build dependencies are
# installed with apt-get if missing; the source and build are cached with the real-Xen tier's.
xen-netbuf-debs:
	$(INSTALL_PYTHON) tools/xendebs.py $(if $(XEN),--xen $(XEN))

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage* .cache dist
