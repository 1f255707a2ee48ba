"""A domain's plugs per epoch: one PlugGroup batch against a loop of Plugs (libxl's way).

Figures, never assertions. For 1, 4 and 16 IFBs (a root plug each, in a namespace of its own),
the time of one epoch cycle -- buffer on every IFB, then release_one on every IFB -- through a
``PlugGroup`` (one write per action, carrying a request per IFB) and through one ``Plug`` per
IFB, driven one after the other. Also the buffer half alone: how long the IFBs' epoch marks
take to be set, an upper bound on how far apart the vifs' epochs may be cut.

Needs root and a kernel with sch_plug: run it inside the VM (``make bench`` does; by hand,
``python bench/plug_group.py`` in the VM). A VM under TCG makes every system call and Python
itself many times slower: compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: bench/ is on the path, the repo is not
    sys.path.insert(0, str(REPO))

from remus_netbuf.plug import Plug, PlugGroup  # noqa: E402

SIZES = (1, 4, 16)
ROUNDS = 7  # group and loop alternate, each first in turn, so drifts hit both alike
ROUND_SECONDS = 1.0  # each measurement runs at least this long (and MIN_CYCLES cycles)
MIN_CYCLES = 20


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the medians as JSON")
    parser.add_argument("--seconds", type=float, default=ROUND_SECONDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    results = {}
    with namespace(max(SIZES)) as (ns, ifbs):
        for size in SIZES:
            results[size] = measure(ns, ifbs[:size], args.seconds)
    if args.json:
        print(json.dumps(results, indent=1, sort_keys=True))
    else:
        print(table(results))
    return 0


def measure(ns: str, ifbs: list[str], seconds: float) -> dict[str, float]:
    """Medians over ROUNDS, in µs: a cycle and its buffer half, by group and by loop."""
    samples: dict[str, list[float]] = {"group": [], "loop": [], "group_mark": [], "loop_mark": []}
    with PlugGroup(ifbs, netns=ns) as group, ExitStack() as stack:
        plugs = [stack.enter_context(Plug(ifb, netns=ns)) for ifb in ifbs]

        def loop_buffer() -> None:
            for plug in plugs:
                plug.buffer()

        def loop_release() -> None:
            for plug in plugs:
                plug.release_one()

        ways = [("group", group.buffer, group.release_one), ("loop", loop_buffer, loop_release)]
        for n in range(ROUNDS):
            for name, buffer, release in ways if n % 2 else ways[::-1]:
                cycle, mark = cycles(buffer, release, seconds)
                samples[name].append(cycle)
                samples[f"{name}_mark"].append(mark)
    return {name: statistics.median(values) for name, values in samples.items()}


def cycles(
    buffer: Callable[[], None], release: Callable[[], object], seconds: float
) -> tuple[float, float]:
    """µs per buffer+release cycle, and µs of the buffer half, over at least ``seconds``."""
    for _ in range(3):  # warm up
        buffer()
        release()
    count, marking = 0, 0.0
    start = time.perf_counter()
    while count < MIN_CYCLES or time.perf_counter() - start < seconds:
        before = time.perf_counter()
        buffer()
        marking += time.perf_counter() - before
        release()
        count += 1
    took = time.perf_counter() - start
    return took / count * 1e6, marking / count * 1e6


def table(results: dict[int, dict[str, float]]) -> str:
    lines = [
        "µs per epoch cycle (buffer + release_one on every IFB), medians of "
        f"{ROUNDS} rounds; mark: the buffer half alone",
        f"{'IFBs':>4}  {'group':>8}  {'loop':>8}  {'loop/group':>10}  "
        f"{'group mark':>10}  {'loop mark':>9}",
    ]
    for size, r in results.items():
        lines.append(
            f"{size:>4}  {r['group']:>8.0f}  {r['loop']:>8.0f}  {r['loop'] / r['group']:>10.2f}  "
            f"{r['group_mark']:>10.0f}  {r['loop_mark']:>9.0f}"
        )
    return "\n".join(lines)


@contextmanager
def namespace(count: int) -> Iterator[tuple[str, list[str]]]:
    """A throwaway namespace with ``count`` IFBs, each up with a root plug."""
    ns = "rnb-bench-" + uuid.uuid4().hex[:8]
    run("ip", "netns", "add", ns)
    try:
        ifbs = [f"ifb{n}" for n in range(count)]
        for ifb in ifbs:
            run("ip", "-n", ns, "link", "add", ifb, "type", "ifb")
            run("ip", "-n", ns, "link", "set", ifb, "up")
            run("tc", "-n", ns, "qdisc", "add", "dev", ifb, "root", "plug", "limit", "10000000")
        yield ns, ifbs
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


if __name__ == "__main__":
    sys.exit(main())
