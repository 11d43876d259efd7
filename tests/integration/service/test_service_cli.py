"""The command line: ``zgserve verify`` against a running service, and the NVML probe."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.fakes.openai_backend import FakeOpenAIBackend
from tests.integration.service.conftest import StartService

ZGSERVE = str(Path(sys.executable).parent / "zgserve")


async def run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_verify_chat_against_a_simulated_service(
    fake_backend: FakeOpenAIBackend, start_service: StartService
) -> None:
    service = await start_service(target_url=fake_backend.url)
    code, out = await run(ZGSERVE, "verify", "chat", "--url", service.url, "--offline", "--stream")
    assert code == 1, out  # simulated: the evidence checks fail, loudly
    assert "FAIL         TEE hardware evidence" in out
    assert "PASS         response hash" in out
    assert "PASS         signer is the attested key" in out
    assert "RESULT: FAILED" in out
    assert "RESULT: verified" not in out


async def test_verify_signature_from_files(
    fake_backend: FakeOpenAIBackend, start_service: StartService, tmp_path: Path
) -> None:
    service = await start_service(target_url=fake_backend.url)

    request = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    _, headers, response = await service.post("/chat/completions", request)
    response_id = headers["ZG-Res-Key"]
    (tmp_path / "req").write_bytes(request)
    (tmp_path / "resp").write_bytes(response)
    address = await service.signing_address()
    args = [
        "--request",
        str(tmp_path / "req"),
        "--url",
        service.url,
        "--id",
        response_id,
        "--address",
        address,
    ]
    code, out = await run(ZGSERVE, "verify", "signature", "--response", str(tmp_path / "resp"), *args)
    assert code == 0, out
    assert "RESULT: verified" in out
    (tmp_path / "resp").write_bytes(response.replace(b"w1", b"w9"))
    code, out = await run(ZGSERVE, "verify", "signature", "--response", str(tmp_path / "resp"), *args)
    assert code == 1
    assert "FAIL         response hash" in out


async def test_nvml_probe_is_honest_without_a_gpu() -> None:
    code, out = await run(sys.executable, "-m", "zgserve.service.attestation.nvidia")
    report = json.loads(out[: out.rindex("}") + 1])
    assert code == 1
    assert report.get("evidence_obtained") in (None, False)
    assert "error" in report or report.get("cc_enabled") is False
