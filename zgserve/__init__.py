"""zgserve: the Python provider stack for the 0G Compute Network."""

import sys as _sys

__version__ = "0.1.0"

# CPython's own default. Parsers of client input (json, the C decoder in particular)
# recurse once per nesting level; with a limit this low they raise RecursionError long
# before the C stack runs out, so a deeply nested value costs a 400, not the process.
_RECURSION_LIMIT = 1000
# What ``py_ecc`` (pulled in by eth-account) sets at import: ``max(100000, current)``.
_PY_ECC_LIMIT = 100_000


def _import_py_ecc_without_its_recursion_limit() -> None:
    """Import ``py_ecc`` now and undo the recursion limit it raises.

    py_ecc raises the limit to 100000 at import, process-wide. At that depth the
    json decoder overflows the C stack (a segfault: the whole server is gone) on
    a value nested ~100k deep. Importing it here, first, makes the undo happen
    once, before any zgserve module can import eth-account, so no later import
    raises it again. If py_ecc was imported before zgserve, its value is reset too.
    Costs ~30 ms of start-up (py_ecc imports its submodules lazily).
    """
    already = "py_ecc" in _sys.modules
    before = _sys.getrecursionlimit()
    try:
        import py_ecc  # noqa: F401  # imported for its side effect, which is undone below
    except ImportError:  # not installed: nothing raises the limit
        return
    if already and before == _PY_ECC_LIMIT:
        _sys.setrecursionlimit(_RECURSION_LIMIT)
    elif _sys.getrecursionlimit() != before:
        _sys.setrecursionlimit(before)


_import_py_ecc_without_its_recursion_limit()
