"""Cold fill and warm serving of one large LFS file: now part of the harness (scenarios 1, 2 and 5).

Kept so the old command still works: `python -m bench.core_fill [--size-mib N] [--runs N]` runs
`python -m bench --only 1,2,5` with those settings and without rewriting docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys

from bench.run import main as run_main


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sys.argv = [sys.argv[0], "--only", "1,2,5", "--size-mib", str(args.size_mib), "--runs", str(args.runs), "--no-docs"]
    run_main()


if __name__ == "__main__":
    main()
