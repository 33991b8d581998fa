"""``python -m geomcheck_bench --help`` (with ``benchmarks/`` on ``sys.path``; ``make bench`` does that)."""

import sys

from geomcheck_bench.driver import main

sys.exit(main())
