"""No zgserve process keeps the recursion limit that py_ecc (via eth-account) raises at import.

At py_ecc's 100000 a JSON value nested ~100k deep overflows the C stack inside the
json decoder: a segfault, not an exception. Each check runs in a fresh interpreter,
since the limit is process-wide and the test runner has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
{imports}
assert "py_ecc" in sys.modules, "py_ecc was not imported: the check proves nothing"
print(sys.getrecursionlimit())
"""


def limit_after(imports: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHECK.format(imports=imports)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.parametrize(
    "imports",
    [
        "import zgserve.broker.app\nimport zgserve.service.app",
        "import zgserve.service.app",
        # py_ecc imported before zgserve: its value is reset too.
        "import eth_account\nimport zgserve.broker.app",
    ],
)
def test_recursion_limit_is_the_default_after_import(imports: str) -> None:
    assert limit_after(imports) == 1000


def test_deep_json_raises_instead_of_crashing() -> None:
    code = (
        "import json, zgserve.broker.app\n"
        "try:\n    json.loads('[' * 100000 + ']' * 100000)\n"
        "except RecursionError:\n    print('refused')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "refused"), done.stderr[-2000:]
