"""``remus-netbuf``: the operator's tool for inspecting and driving network output buffering.

Exit status: 0 success (``status``: no anomaly), 1 failure (one line on stderr), 2 ``status``
found anomalies (``check``: warnings, no FAIL).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .errors import BadRequest, ConfigError, NetbufError, one_line
from .request import DOMID_FIRST_RESERVED, Request, check_ifname, xenbus_ids
from .xlconf import XL_CONF

EXIT_ANOMALIES = 2

DESCRIPTION = """\
Inspect and control Xen Remus network buffers (netbufs): the IFB devices that hold a
protected guest's outgoing packets until the checkpoint that produced them is safe.
"""

EPILOG = """\
examples:
  remus-netbuf status                 table of netbufs and anomalies (exit 2 if any)
  remus-netbuf status --json          the same, machine-readable
  remus-netbuf check                  will network buffering work here? (before xl remus)
  remus-netbuf gc --dry-run           what gc would repair
  remus-netbuf plug ifb0 stats        counters of ifb0's plug
  remus-netbuf plug --domain 3 stats  counters of every plug of domain 3's netbufs
  remus-netbuf teardown --vif vif3.0 --xenbus-path /libxl/3/remus/netbuf/0 --ifb ifb0
"""

PLUG_ACTIONS = ("buffer", "release", "release-all", "limit", "stats")

PLUG_EPILOG = """\
actions:
  buffer        start a new epoch: later packets queue behind this mark
  release       release the oldest epoch (everything before the first mark)
  release-all   unplug: release everything, pass packets unbuffered until the next buffer
  limit BYTES   bytes the plug may hold before it drops
  stats         backlog bytes/packets, drops, requeues, overlimits

Several IFBs, or --domain (the IFBs a domain's netbufs claim in xenstore, if it is live), take
the action in one netlink write. Each run is one action, so the epoch guard of the plug API
cannot see earlier runs: sch_plug counts one unreleased epoch, so never buffer twice without a
release in between (the second buffer would let the newer epoch's packets out with the older).

examples:
  remus-netbuf plug ifb0 buffer && remus-netbuf plug ifb0 release
  remus-netbuf plug ifb0 ifb1 buffer
  remus-netbuf plug --domain 3 release
  remus-netbuf plug ifb0 limit 20000000
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 1 (exit 2 means anomalies)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {one_line(message)} (see --help)\n")
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="remus-netbuf", description=DESCRIPTION, epilog=EPILOG, formatter_class=raw
    )
    parser.add_argument("--version", action="version", version=f"remus-netbuf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    status = sub.add_parser(
        "status",
        help="show every netbuf and the anomalies",
        description="One row per netbuf (claim in xenstore) with its IFB's state, then the "
        "anomalies. Exit 0 when clean, 2 when anomalies are found.",
        epilog="examples:\n  remus-netbuf status\n  remus-netbuf status --json | jq .anomalies",
        formatter_class=raw,
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--format",
        choices=["table", "json", "prometheus"],
        default="table",
        help="table (default), json (as --json), or prometheus: node_exporter textfile metrics",
    )
    status.add_argument(
        "--output", metavar="FILE", help="with --format prometheus: write FILE atomically"
    )

    check = sub.add_parser(
        "check",
        help="preflight before xl remus: will network buffering work on this host?",
        description="Probe the kernel in a throwaway network namespace (what setup does, then "
        "deleted), and check xenstored, the config, lock_dir, free IFBs, the script xl runs, "
        "whether libxenlight was built with network buffering, and anomalies. One line per "
        "check: ok, warn or FAIL with the fix. Exit 0 all ok, 1 any FAIL, 2 warnings only.",
        epilog="examples:\n  remus-netbuf check\n  remus-netbuf check --json | jq .result",
        formatter_class=raw,
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument(
        "--xl-conf", default=XL_CONF, metavar="FILE", help=f"xl.conf to read (default {XL_CONF})"
    )
    check.add_argument(
        "--libxenlight",
        metavar="FILE",
        help="the libxenlight to inspect (default: the one xl loads, as the loader finds it)",
    )

    gc = sub.add_parser(
        "gc",
        help="repair anomalies that belong to no live netbuf",
        description="Under the pickifb lock, undo the anomalies no live netbuf owns: dead "
        "domains' claims, unclaimed plugs, unclaimed redirects. Live netbufs are never touched.",
        epilog="examples:\n  remus-netbuf gc --dry-run\n  remus-netbuf gc",
        formatter_class=raw,
    )
    gc.add_argument("--dry-run", action="store_true", help="print what would be done, do nothing")

    plug = sub.add_parser(
        "plug",
        help="drive IFBs' plugs by hand",
        usage="remus-netbuf plug [-h] {IFB [IFB ...] | --domain D} ACTION [BYTES]",
        description="The plug control API from the command line, for manual operation and "
        "checkpointers other than libxl.",
        epilog=PLUG_EPILOG,
        formatter_class=raw,
    )
    plug.add_argument("--domain", metavar="D", help="every IFB domain D's netbufs claim")
    plug.add_argument(
        "words",
        nargs="*",
        metavar="IFB... ACTION [BYTES]",
        help="the IFB devices (e.g. ifb0), then one of: " + ", ".join(PLUG_ACTIONS),
    )

    for name, verb in (("setup", "install"), ("teardown", "remove")):
        hot = sub.add_parser(
            name,
            help=f"{verb} a netbuf by hand (the hotplug action)",
            description=f"The hotplug {name}, with flags instead of libxl's environment; the "
            "same code path as remus-netbuf-setup, including hotplug-status/-error.",
            epilog=f"example:\n  remus-netbuf {name} --vif vif3.0 "
            "--xenbus-path /libxl/3/remus/netbuf/0" + (" --ifb ifb0" if name == "teardown" else ""),
            formatter_class=raw,
        )
        hot.add_argument("--vif", required=True, help="the guest's vif, e.g. vif3.0")
        hot.add_argument("--xenbus-path", required=True, help="/libxl/<domid>/remus/netbuf/<devid>")
        if name == "teardown":
            hot.add_argument("--ifb", help="the IFB to free (default: the claim's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from .log import setup_logging

    setup_logging("remus-netbuf")
    try:
        if args.command in ("setup", "teardown"):
            return _hotplug(args)
        if args.command == "plug":
            return _plug(args)
        if args.command == "check":
            return _check(args)
        if args.command == "status" and (args.format == "prometheus" or args.output):
            return _metrics(args)
        return _status_or_gc(args)
    except NetbufError as err:
        sys.stderr.write(f"remus-netbuf: {err}\n")
        return 1


def _hotplug(args: argparse.Namespace) -> int:
    from .hotplug import run

    try:
        xenbus_ids(args.xenbus_path)
        check_ifname(args.vif, "--vif")
        if args.command == "teardown" and args.ifb:
            check_ifname(args.ifb, "--ifb")
    except BadRequest as err:
        sys.stderr.write(f"remus-netbuf: {err}\n")
        return 1
    request = Request(args.command, args.vif, args.xenbus_path, getattr(args, "ifb", None))
    return run(request, os.environ)


def _plug(args: argparse.Namespace) -> int:
    from .plug import PlugGroup

    ifbs, action, limit = plug_words(args.words, args.domain is not None)
    # One action per run: the guard could only see this run's, so the kernel's rule is the
    # admin's to keep (see PLUG_EPILOG).
    if args.domain is not None:
        group = PlugGroup.for_domain(domid_of(args.domain), guard=False)
    else:
        group = PlugGroup(ifbs, guard=False)
    with group:
        if action == "buffer":
            group.buffer()
        elif action == "release":
            group.release_one()
        elif action == "release-all":
            group.release_all()
        elif action == "limit":
            group.set_limit(limit)
        else:
            for ifb, s in group.stats().items():
                print(
                    f"{ifb}: backlog {s.backlog_bytes}b {s.backlog_packets}p "
                    f"drops {s.drops} requeues {s.requeues} overlimits {s.overlimits} "
                    f"sent {s.bytes}b {s.packets}p"
                )
    return 0


def plug_words(words: Sequence[str], domain: bool) -> tuple[list[str], str, int]:
    """``IFB... ACTION [BYTES]`` (no IFB with --domain) -> (IFBs, action, limit)."""
    at = next((i for i, word in enumerate(words) if word in PLUG_ACTIONS), None)
    if at is None:
        if len(words) > (0 if domain else 1):
            choices = ", ".join(PLUG_ACTIONS)
            raise BadRequest(detail=f"invalid choice: {words[-1]!r} (choose from {choices})")
        needed = "action" if domain or words else "ifb, action"
        raise BadRequest(detail=f"the following arguments are required: {needed}")
    ifbs, action, rest = list(words[:at]), words[at], words[at + 1 :]
    if domain == bool(ifbs):
        raise BadRequest(
            detail="give IFBs or --domain D, not both"
            if domain
            else "the following arguments are required: ifb"
        )
    for ifb in ifbs:
        check_ifname(ifb, "IFB")
    if (action == "limit") != (len(rest) == 1) or len(rest) > 1:
        raise BadRequest(detail="limit takes BYTES; the other actions take nothing")
    limit = 0
    if action == "limit":
        limit = int(rest[0]) if rest[0].isascii() and rest[0].isdigit() else 0
        if not 0 < limit < 2**32:
            raise BadRequest(detail=f"limit {rest[0]!r} is not a number of bytes, 1..2^32-1")
    return ifbs, action, limit


def domid_of(text: str) -> int:
    domid = int(text) if text.isascii() and text.isdigit() else 0
    if not 0 < domid < DOMID_FIRST_RESERVED:
        raise BadRequest(detail=f"--domain {text!r} is not a guest's domid (1-32751)")
    return domid


def _check(args: argparse.Namespace) -> int:
    from .check import exit_status, render_json, render_text, run_checks
    from .log import WARNING, log

    log.set_level(WARNING)  # the probe's steps: not news
    results = run_checks(os.environ, args.xl_conf, args.libxenlight)
    sys.stdout.write(render_json(results) if args.json else render_text(results))
    return exit_status(results)


def _metrics(args: argparse.Namespace) -> int:
    if args.format != "prometheus" or args.json:
        raise BadRequest(detail="--output goes with --format prometheus (and not --json)")
    try:
        from . import metrics
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("prometheus_client"):
            raise
        need = "pip install 'remus-netbuf[metrics]'"
        raise NetbufError(detail=f"--format prometheus needs prometheus_client: {need}") from None
    scrape = metrics.scrape(os.environ)
    if args.output:
        metrics.write(scrape, args.output)
    else:
        sys.stdout.write(metrics.exposition(scrape))
    if scrape.error is not None:
        raise NetbufError(detail=scrape.error)
    return EXIT_ANOMALIES if scrape.anomalies else 0


def _status_or_gc(args: argparse.Namespace) -> int:
    from .audit import anomalies
    from .config import config_problem, load_config
    from .lock import pickifb_lock
    from .netlink import Netlink
    from .status import gc, render_json, render_table, scan
    from .xenstore import Xenstore, socket_path

    with Xenstore(socket_path(os.environ)) as xs, Netlink() as nl:
        if args.command == "status":
            snap = scan(xs, nl, config_problem(os.environ))
            as_json = args.json or args.format == "json"
            sys.stdout.write(render_json(snap) if as_json else render_table(snap))
            return EXIT_ANOMALIES if anomalies(snap) else 0
        # As teardown, gc needs lock_dir alone: a problem confined to another key only warns.
        with pickifb_lock(load_config(os.environ, _ignore_for_gc).lock_dir):
            lines = gc(xs, nl, args.dry_run)
    for line in lines or ["nothing to repair"]:
        print(line)
    return 0


def _ignore_for_gc(err: ConfigError) -> None:
    from .log import log

    log.warning("gc: ignoring key %s (only lock_dir is needed): %s", err.fields["key"], err)


if __name__ == "__main__":
    sys.exit(main())
