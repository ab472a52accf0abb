"""The committed CPU speed benchmark: `neft bench` writing to benchmarks/results.

    .venv/bin/python benchmarks/speed.py            # -> benchmarks/results/speed_cpu.*

Any `neft bench` flag may follow and wins over these defaults (see --help). It passes
--overwrite: refreshing the committed results is what it is for (hand-written notes below
the marker in the .md are kept).
"""

from __future__ import annotations

import os
import sys

from neft.cli import main

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

if __name__ == "__main__":
    sys.exit(main(["bench", "--output_dir", RESULTS, "--overwrite", *sys.argv[1:]]))
