"""Wire models of the verifiable service (what clients and verifiers read).

Completion requests and responses are not modelled here on purpose: they are
forwarded as raw bytes. Unknown fields are allowed everywhere so that newer peers
and verifiers keep working.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int | None = None


class SignatureRecord(WireModel):
    """``GET /v1/signature/{id}``: the signed text and its EIP-191 signature."""

    text: str
    signature: str
    signing_address: str
    signing_algo: str = "ecdsa"


class NvidiaEvidence(WireModel):
    certificate: str
    evidence: str


class NvidiaPayload(WireModel):
    """The object inside ``nvidia_payload`` (a JSON string on the wire).

    Without GPU evidence ``evidence_list`` is empty and ``available`` is false,
    with ``reason``; in simulated mode ``simulated`` is true.
    """

    nonce: str
    evidence_list: list[NvidiaEvidence]
    arch: str | None = None
    simulated: bool | None = None
    available: bool | None = None
    reason: str | None = None


class AttestationEntry(WireModel):
    signing_address: str
    signing_algo: str
    request_nonce: str
    intel_quote: str
    nvidia_payload: str
    event_log: Any = ""
    info: dict[str, Any] = {}
    tee: str
    report_data: str | None = None
    simulated: bool | None = None
    warning: str | None = None


class AttestationReport(AttestationEntry):
    """``GET /v1/attestation/report``: one entry per replica in ``all_attestations``."""

    all_attestations: list[AttestationEntry]


class Health(WireModel):
    status: str
    signing_address: str
    tee: str
    gpu_evidence: bool
