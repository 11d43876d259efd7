"""Answer checks: signed hashes against the exact bytes, the SDK's signer rule, content extraction."""

from __future__ import annotations

import json

import pytest

from zgserve.chain.types import Service
from zgserve.client.openai_client import Exchange
from zgserve.client.provider import SignatureRecord, response_signer, sdk_would_verify
from zgserve.client.responses import answer_text, check_exchange, usage
from zgserve.common.signing import Signer, signed_text

REQUEST = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
JSON_BODY = (
    b'{"id":"chatcmpl-1","choices":[{"index":0,"message":{"role":"assistant","content":"h\xc3\xa9"}}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
)
SSE_BODY = (
    b'data: {"id":"chatcmpl-2","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
    b'data: {"id":"chatcmpl-2","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    b'data: {"id":"chatcmpl-2","choices":[{"index":0,"delta":{"content":"b"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}\n\n'
    b"data: [DONE]\n\n"
)


def exchange(body: bytes, *, streamed: bool = False, complete: bool = True, status: int = 200) -> Exchange:
    headers = {"content-type": "text/event-stream" if streamed else "application/json"}
    return Exchange("POST", "http://p/v1/proxy/chat/completions", REQUEST, status, headers, body, complete)


def record(signer: Signer, body: bytes) -> SignatureRecord:
    text = signed_text(REQUEST, body)
    return SignatureRecord(text, signer.sign_text(text), signer.address, "ecdsa")


def service(**overrides: object) -> Service:
    fields: dict[str, object] = {
        "provider": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "service_type": "chatbot",
        "url": "http://p",
        "input_price": 1,
        "output_price": 2,
        "updated_at": 0,
        "model": "m",
        "verifiability": "TeeML",
        "additional_info": "{}",
        "tee_signer_address": "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A",
        "tee_signer_acknowledged": True,
    }
    return Service(**(fields | overrides))  # type: ignore[arg-type]


@pytest.mark.parametrize(("body", "streamed"), [(JSON_BODY, False), (SSE_BODY, True)])
def test_valid_answer_is_verified(body: bytes, streamed: bool) -> None:
    signer = Signer.generate()
    result = check_exchange(exchange(body, streamed=streamed), record(signer, body), signer.address)
    assert result.verified, result.render()


def test_tampered_content_fails() -> None:
    signer = Signer.generate()
    good = record(signer, JSON_BODY)
    altered = JSON_BODY.replace(b"h\xc3\xa9", b"ha")
    result = check_exchange(exchange(altered), good, signer.address)
    assert not result.verified
    assert [c.name for c in result.failed] == ["response hash"]


def test_other_signer_fails() -> None:
    signer, other = Signer.generate(), Signer.generate()
    result = check_exchange(exchange(JSON_BODY), record(other, JSON_BODY), signer.address)
    assert [c.name for c in result.failed] == ["signer is the attested key"]


def test_incomplete_or_failed_answers_fail() -> None:
    signer = Signer.generate()
    partial = SSE_BODY[:80]
    result = check_exchange(
        exchange(partial, streamed=True, complete=False), record(signer, partial), signer.address
    )
    assert "whole response received" in [c.name for c in result.failed]
    error = check_exchange(exchange(JSON_BODY, status=500), record(signer, JSON_BODY), signer.address)
    assert "HTTP status 200" in [c.name for c in error.failed]


def test_answer_text_and_usage_from_bytes() -> None:
    assert answer_text(exchange(JSON_BODY)) == "hé"
    assert usage(exchange(JSON_BODY)) == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert answer_text(exchange(SSE_BODY, streamed=True)) == "ab"
    assert usage(exchange(SSE_BODY, streamed=True)) == {
        "prompt_tokens": 4,
        "completion_tokens": 2,
        "total_tokens": 6,
    }
    assert answer_text(exchange(b"not json")) == ""
    assert usage(exchange(b"{}")) is None
    legacy = json.dumps({"id": "c", "choices": [{"text": "old"}]}).encode()
    assert answer_text(exchange(legacy)) == "old"


def test_response_signer_rule() -> None:
    target = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
    plain = service()
    assert response_signer(plain) == plain.tee_signer_address
    separated = {"TargetSeparated": True, "TargetTeeAddress": target}
    assert response_signer(service(additional_info=json.dumps(separated))) == target
    centralized = separated | {"ProviderType": "centralized"}
    assert response_signer(service(additional_info=json.dumps(centralized))) == plain.tee_signer_address


def test_sdk_preconditions() -> None:
    assert sdk_would_verify(service()) is None
    assert sdk_would_verify(service(verifiability="none")) is not None
    assert sdk_would_verify(service(tee_signer_acknowledged=False)) is not None
    assert sdk_would_verify(service(additional_info="")) is not None
