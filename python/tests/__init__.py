"""Tests of Berth's Python side. Run from the repository root with:

    /usr/bin/python3 -m unittest discover -s python/tests -t python

They need dill (Debian's python3-dill, available to /usr/bin/python3).
"""

import sys

try:
    import dill  # noqa: F401
except ImportError:
    raise ImportError(
        f"the Berth Python tests need dill, which {sys.executable} lacks: "
        "run them with /usr/bin/python3 (apt-get install python3-dill)"
    ) from None
