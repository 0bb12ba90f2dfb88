"""Time the HTML reading of the content filters on broken markup (CVE-2025-6069 class):
`python bench/bench_html_dos.py [--sizes 25000,100000,1000000] [--timeout 60] [--pattern NAME ...]`.

Python's html.parser (3.11.7 and every version without the fix for CVE-2025-6069) is
quadratic at the end of its input: each construct it cannot complete (an unclosed "<!--",
"<![CDATA[", "</", "<?", a start tag that runs to the end) is searched for to the end of
the markup, read as text up to the next '>' or '<' only, and the search starts over there.

Each pattern is repeated up to the size after a line of valid HTML, and
relay.filters.content.scan_html (what every content filter reads HTML through) runs on it
in a child process, killed after --timeout seconds.  CPU seconds per size.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PATTERNS = {
    "unclosed start tags <a ": "<a ",
    "start tags with a bare value <a b=": "<a b=",
    "start tags through quoted '>' <a b='>'": "<a b='>'",
    "unclosed comments <!--": "<!--",
    "comments closed by '>' only <!--x>": "<!--x>",
    "unclosed CDATA <![CDATA[>": "<![CDATA[>",
    "unclosed end tags </": "</",
    "unclosed end tags </a": "</a",
    "unclosed processing instructions <?": "<?",
    "unclosed declarations <!x": "<!x",
    "lone '<' and '&' <&": "<&",
}
PREFIX = '<p>Hello, your order has shipped.</p><a href="https://shop.example/">shop</a>'


def markup(name: str, size: int) -> str:
    unit = PATTERNS[name]
    return PREFIX + unit * ((size - len(PREFIX)) // len(unit))


def _child(name: str, size: int, queue) -> None:
    from relay.filters import content

    text = markup(name, size)
    start = time.process_time()
    scan = content.scan_html(text)
    queue.put((time.process_time() - start, getattr(scan, "complete", True)))


def measure(name: str, size: int, timeout: float) -> str:
    queue = multiprocessing.Queue()
    child = multiprocessing.Process(target=_child, args=(name, size, queue))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return f">{timeout:g} s"
    if child.exitcode != 0:
        return f"exit {child.exitcode}"
    seconds, complete = queue.get()
    return f"{seconds:.3f} s" + ("" if complete else " (incomplete)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="25000,50000,100000,1000000")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--pattern", action="append", choices=list(PATTERNS))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'pattern':44}" + "".join(f"{f'{s // 1000} KB':>22}" for s in sizes))
    for name in args.pattern or list(PATTERNS):
        cells = []
        for size in sizes:
            cell = measure(name, size, args.timeout)
            cells.append(cell)
            if cell.startswith(">"):
                cells += ["(skipped)"] * (len(sizes) - len(cells))
                break
        print(f"{name:44}" + "".join(f"{c:>22}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
