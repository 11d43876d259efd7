"""The official SDK's own attestation checks, run from Node on reports we produce.

``Verifier.processDStackVerification`` (compose hash from ``tcb_info`` and the event
log) and ``Verifier.extractTeeSignerAddress`` (the signer read from ``report_data``),
from ``@0gfoundation/0g-compute-ts-sdk`` as installed under ``node/node_modules``,
unchanged: what an SDK user's ``verifyService`` would conclude about a report.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from zgserve.devnet.node import NodeToolsMissing, run_node_script

SCRIPT = Path(__file__).with_name("js") / "sdk_dstack_checks.mjs"
SDK_PACKAGE = "@0gfoundation/0g-compute-ts-sdk"


async def sdk_dstack_checks(reports: dict[str, dict[str, Any]], limit_s: float = 60.0) -> dict[str, Any]:
    """Per report name: ``compose`` (bool), ``composeDetails``, ``signer`` (str or None), ``log``.

    Raises :class:`NodeToolsMissing` when Node or the SDK is not installed.
    """
    with tempfile.TemporaryDirectory() as tmp:
        # Through JSON text: the SDK sees exactly what a client downloads.
        path = Path(tmp) / "reports.json"
        path.write_text(json.dumps(reports))
        stdout = await asyncio.to_thread(run_node_script, SCRIPT, str(path), timeout=limit_s)
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise NodeToolsMissing(f"{SCRIPT.name} printed no result")
