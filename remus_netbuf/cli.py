"""``remus-netbuf``: the operator's tool for inspecting and driving network output buffering."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

DESCRIPTION = """\
Inspect and control Xen Remus network buffers (netbufs): the IFB devices that hold a
protected guest's outgoing packets until the checkpoint that produced them is safe.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remus-netbuf",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"remus-netbuf {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
