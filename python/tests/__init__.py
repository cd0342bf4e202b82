"""Tests of Berth's Python side. Run from the repository root with:

    /usr/bin/python3 -m unittest discover -s python/tests -t python
"""
