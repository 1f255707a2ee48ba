"""The real-Xen tier's platform check, run in dom0 while the guests run: copies 2 MB in memory
for SECONDS and prints how many copies it made and how many differed from their source.

Under QEMU 7.2's TCG, a CPU model that offers XSAVE had Xen's switches between dom0 and the
guests corrupt dom0 processes' SSE registers: about one 2 MB copy in 40 came out wrong, and
with it malloc's free lists, stdio buffers and files read (segfaults in tc, bash, xl, Python).
tools/e2e.py's CPU model leaves XSAVE out; this check says so at once if a model brings it back.
"""

import sys
import time

SOURCE = bytes(range(256)) * 8192


def main(seconds: float) -> None:
    copies = wrong = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        copy = bytearray(SOURCE)  # memcpy, with SSE registers
        copies += 1
        wrong += copy != SOURCE
    print(copies, wrong)


if __name__ == "__main__":
    main(float(sys.argv[1]))
