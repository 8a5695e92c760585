"""The worked examples in drgrpo.py's docstrings are checked, so they cannot drift from the code."""

import doctest

from conftest import load_script

import drgrpo


def test_docstring_examples():
    result = doctest.testmod(drgrpo)
    assert result.attempted >= 15 and result.failed == 0
    # the tools beside their data
    for script in ("data/arith/prepare.py", "data/math/prepare.py"):
        result = doctest.testmod(load_script(script))
        assert result.attempted >= 1 and result.failed == 0
