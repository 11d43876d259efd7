"""The pure-Python reading of the SDK's ABIs equals what Node reads from the same files."""

from __future__ import annotations

import pytest

from zgserve.chain.sdk_abi import abis_from_package_dir, js_literal_to_json
from zgserve.devnet.artifacts import sdk_artifacts
from zgserve.devnet.node import SDK_PACKAGE, package_dir


def test_js_literal_forms() -> None:
    text = "[{ name: 'a\\'b', type: \"uint8\", ok: true, n: 3, inner: [ { x: 'y', }, ], },]"
    expected = [{"name": "a'b", "type": "uint8", "ok": True, "n": 3, "inner": [{"x": "y"}]}]
    assert js_literal_to_json(text) == expected


@pytest.mark.parametrize("name", ["LedgerManager", "InferenceServing"])
def test_pure_python_abi_equals_node(name: str) -> None:
    from_python = abis_from_package_dir(package_dir(SDK_PACKAGE))[name]
    from_node = sdk_artifacts()[name].abi
    assert len(from_python) > 20
    assert from_python == from_node
