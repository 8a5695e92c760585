"""The worked examples in drgrpo.py's docstrings are checked, so they cannot drift from the code."""
import doctest

import drgrpo


def test_docstring_examples():
    result = doctest.testmod(drgrpo)
    assert result.attempted >= 15 and result.failed == 0
