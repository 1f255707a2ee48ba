"""``make matrix``: every stack our users run, each tier on it, and one table of the outcomes.

A stack is a Debian release's kernel, Python and Xen: bookworm (6.1, 3.11, Xen 4.17), trixie
(6.12, 3.13, Xen 4.20) and sid (7.2, 3.14). Each part is one command of the project's own
(the kernel tier on a suite's kernel, the unit and native suite under a suite's Python, the
real-Xen tier on a Xen version, ``remus-netbuf check`` on a suite's kernel), run in turn, its
output kept whole in ``.cache/matrix/<part>.log`` and summarised as it ends. The table's rows
are the stacks, its columns the tiers; a cell holds the part's passed/failed counts and its wall
time. Exit 0 only when every part passed.

    python -m tools.matrix [--only PART,...] [--list]

Every part runs but those marked optional (``--list`` says which), which run only when named.

``REMUS_NETBUF_MATRIX_ONLY`` does what ``--only`` does.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO / ".cache" / "matrix"
PY = str(REPO / ".venv" / "bin" / "python")
STACKS = {
    "bookworm": "Debian 12 bookworm: kernel 6.1, Python 3.11, Xen 4.17",
    "trixie": "Debian 13 trixie: kernel 6.12, Python 3.13, Xen 4.20",
    "sid": "Debian sid: kernel 7.2, Python 3.14",
}
TIERS = ("unit + native", "kernel tier", "remus-netbuf check", "real Xen")
TAIL = 30  # lines of a failed part's log printed under it
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")
E2E_VERDICT = re.compile(r"\] (PASS|FAIL) (\S+)")


@dataclass
class Part:
    name: str
    stack: str
    tier: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    count: Callable[[str], dict[str, int]] = field(default=lambda text: pytest_counts(text))
    default: bool = True  # run without --only


@dataclass
class Outcome:
    part: Part
    returncode: int
    wall: float
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def cell(self) -> str:
        shown = ", ".join(f"{n} {word}" for word, n in self.counts.items() if n)
        verdict = shown or ("passed" if self.ok else f"exit {self.returncode}")
        if not self.ok and "failed" not in self.counts:
            verdict += f" (exit {self.returncode})"
        return f"{verdict}; {self.wall / 60:.1f} min"


def pytest_counts(text: str) -> dict[str, int]:
    """The counts of pytest's closing line (the last line that has any)."""
    for line in reversed(text.splitlines()):
        found = PYTEST_COUNT.findall(line)
        if found and (" in " in line or line.startswith("=")):
            counts: dict[str, int] = {}
            for number, word in found:
                word = "errors" if word.startswith("error") else word
                counts[word] = counts.get(word, 0) + int(number)
            return counts
    return {}


def e2e_counts(text: str) -> dict[str, int]:
    """Scenarios passed and failed, from the real-Xen tier's verdict lines."""
    verdicts = dict((name, word) for word, name in E2E_VERDICT.findall(text))
    counts = {"passed": 0, "failed": 0}
    for word in verdicts.values():
        counts["passed" if word == "PASS" else "failed"] += 1
    return {f"scenarios {k}": n for k, n in counts.items()}


# In the VM there is no Xen, so xenstored's and xl's lines fail by nature: the part judges the
# kernel probe's lines (each module the netbuf needs, proven by doing what setup does).
CHECK = """uname -r
out=$(.venv/bin/remus-netbuf check --xl-conf /dev/null 2>&1)
printf '%s\\n' "$out"
printf '%s\\n' "$out" | grep -Eq '^ok +kernel-redirect' || exit 1
! printf '%s\\n' "$out" | grep -Eq '^FAIL +kernel'
"""


def check_counts(text: str) -> dict[str, int]:
    """The check's kernel lines by verdict."""
    counts = {"kernel checks ok": 0, "kernel checks failed": 0}
    for line in text.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] in ("ok", "warn", "FAIL") and words[1].startswith("kernel-"):
            counts["kernel checks ok" if words[0] == "ok" else "kernel checks failed"] += 1
    return counts


def parts() -> list[Part]:
    """Every part, in the order they run."""
    found = []
    for suite in ("bookworm", "trixie", "sid"):
        kernel = {"REMUS_NETBUF_VM_KERNEL": suite}
        found.append(
            Part(
                f"kernel-{suite}",
                suite,
                "kernel tier",
                [PY, "-m", "pytest", "-m", "vm", "-p", "no:cacheprovider", "-q"],
                kernel,
            )
        )
        found.append(
            Part(
                f"check-{suite}",
                suite,
                "remus-netbuf check",
                [PY, "-m", "tools.vm", "--", "sh", "-c", CHECK],
                kernel,
                check_counts,
            )
        )
    found.append(
        Part(
            "native-bookworm",
            "bookworm",
            "unit + native",
            [PY, "-m", "pytest", "-m", "not vm", "-p", "no:cacheprovider", "-q"],
        )
    )
    for suite in ("trixie", "sid"):
        found.append(
            Part(
                f"native-{suite}",
                suite,
                "unit + native",
                [PY, "-m", "tools.pyroot", "--suite", suite],
            )
        )
    found.append(Part("e2e-4.17", "bookworm", "real Xen", ["make", "e2e"], count=e2e_counts))
    # Not by default: Debian's mirror here serves no source of trixie's Xen, so 4.20's
    # libxenlight cannot be built with network buffering (docs/real-xen-tier.md), and without
    # it every Remus scenario fails in libxl. --only e2e-4.20 runs it where it can be built.
    found.append(
        Part(
            "e2e-4.20",
            "trixie",
            "real Xen",
            ["make", "e2e", "XEN=4.20"],
            count=e2e_counts,
            default=False,
        )
    )
    return found


def run(part: Part, say: Callable[[str], None]) -> Outcome:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{part.name}.log"
    say(f"{part.name}: {shown(part.argv)}  (log: {log})")
    start = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run(
            part.argv,
            cwd=REPO,
            env={**os.environ, **part.env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    text = log.read_text(errors="replace")
    outcome = Outcome(part, done.returncode, time.monotonic() - start, part.count(text))
    say(f"{part.name}: {'passed' if outcome.ok else 'FAILED'}: {outcome.cell()}")
    if part.tier == "remus-netbuf check" or not outcome.ok:
        lines = text.splitlines()
        for line in lines if part.tier == "remus-netbuf check" else lines[-TAIL:]:
            say(f"    {line}")
    return outcome


def shown(argv: Sequence[str]) -> str:
    return " ".join(argv).replace(str(REPO) + "/", "").replace("\n", "; ")


def table(outcomes: Sequence[Outcome]) -> list[str]:
    """The Markdown table: a row per stack, a column per tier."""
    cells = {(o.part.stack, o.part.tier): o for o in outcomes}
    tiers = [t for t in TIERS if any(tier == t for _, tier in cells)]
    rows = [
        "| stack | " + " | ".join(tiers) + " |",
        "|---|" + "---|" * len(tiers),
    ]
    for stack, title in STACKS.items():
        if not any(s == stack for s, _ in cells):
            continue
        row = [title]
        for tier in tiers:
            outcome = cells.get((stack, tier))
            mark = "" if outcome is None or outcome.ok else "**FAILED** "
            row.append("—" if outcome is None else mark + outcome.cell())
        rows.append("| " + " | ".join(row) + " |")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.matrix", description=__doc__)
    parser.add_argument(
        "--only",
        default=os.environ.get("REMUS_NETBUF_MATRIX_ONLY", ""),
        help="comma-separated part names (default: all; --list names them)",
    )
    parser.add_argument("--list", action="store_true", help="list the parts and exit")
    args = parser.parse_args(argv)
    chosen = parts()
    if args.list:
        for part in chosen:
            extra = "" if part.default else "  (only with --only)"
            print(f"{part.name:16} {part.stack:9} {part.tier:19} {shown(part.argv)}{extra}")
        return 0
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {p.name for p in chosen}
        if unknown:
            parser.error(f"unknown parts: {', '.join(sorted(unknown))} (--list names them)")
        chosen = [p for p in chosen if p.name in wanted]
    else:
        chosen = [p for p in chosen if p.default]
    start = time.monotonic()

    def say(line: str) -> None:
        print(f"matrix [{(time.monotonic() - start) / 60:5.1f} min] {line}", flush=True)

    outcomes = [run(part, say) for part in chosen]
    say(f"all parts done in {(time.monotonic() - start) / 60:.1f} min")
    print()
    for line in table(outcomes):
        print(line)
    failed = [o.part.name for o in outcomes if not o.ok]
    print()
    print(
        f"make matrix: {len(outcomes) - len(failed)} parts passed, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
