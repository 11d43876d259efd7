"""A user's audit of what a provider settled, with the answers the user kept.

Wires :mod:`zgserve.client.audit` to the user's side: the settlements (receipts and
Merkle proofs) come from the provider's broker, the signer and the prices from the
chain, and the held responses from an :class:`~zgserve.client.openai_client.ExchangeRecorder`
together with the service's signatures of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zgserve.client.audit import (
    AuditReport,
    HeldResponse,
    audit_settlement,
    fetch_settlements,
    find_double_charges,
)
from zgserve.client.openai_client import Exchange
from zgserve.client.provider import response_signer
from zgserve.common.errors import NotFound

if TYPE_CHECKING:
    from zgserve.client.user import UserClient


@dataclass
class SettlementAudit:
    """Every settlement of one user with one provider, each with its audit report."""

    settlements: list[dict[str, Any]] = field(default_factory=list)
    reports: list[AuditReport] = field(default_factory=list)
    double_charges: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.double_charges and all(r.ok for r in self.reports)

    @property
    def failed(self) -> bool:
        """A check failed (as opposed to receipts left unmatched for want of the answer)."""
        return bool(self.double_charges) or any(r.failures for r in self.reports)

    @property
    def receipts(self) -> int:
        return sum(r.receipts for r in self.reports)

    @property
    def unmatched(self) -> list[str]:
        """Response ids charged for which the user holds no answer."""
        return [sid for r in self.reports for sid in r.unmatched]

    @property
    def total_fee(self) -> int:
        return sum(r.total_fee for r in self.reports)


async def held_responses(
    user: UserClient, provider: str, exchanges: Iterable[Exchange]
) -> list[HeldResponse]:
    """What the user kept of each successful exchange, with the service's signature when it has one."""
    held: list[HeldResponse] = []
    for exchange in exchanges:
        chat_id = exchange.chat_id
        if exchange.status != 200 or not exchange.complete or not chat_id:
            continue
        text: str | None = None
        signature: str | None = None
        # A signature expired from the service's store leaves text/signature None: the
        # receipt is still matched by id and usage.
        with contextlib.suppress(NotFound):
            record = await user.fetch_signature(provider, chat_id)
            text, signature = record.text, record.signature
        try:
            held.append(
                HeldResponse.from_exchange(
                    chat_id, exchange.request_body, exchange.response_body, text=text, signature=signature
                )
            )
        except ValueError:
            continue  # no usage in the answer: nothing a receipt could be matched with
    return held


async def audit_settlements(
    user: UserClient,
    provider: str,
    exchanges: Iterable[Exchange] = (),
    held_media: Iterable[HeldResponse] = (),
) -> SettlementAudit:
    """Fetch the user's settlements from the provider and audit each (see :mod:`zgserve.client.audit`).

    Receipts are matched with ``exchanges`` (chats) and ``held_media`` (embeddings, images and
    audio answers, by their units, fee and signature): a receipt without a matching held
    response is reported as a problem, so pass every answer had from this provider. Prices are
    the service's current on-chain prices.
    """
    service = await user.get_service(provider, fresh=True)
    http = await user.provider_http(provider)
    token = await user.session_token(provider)
    settlements = await fetch_settlements(http.session, http.url, user.address, token.authorization())
    held = {h.response_id: h for h in await held_responses(user, provider, exchanges)}
    held.update({h.response_id: h for h in held_media})
    audit = SettlementAudit(settlements=settlements, double_charges=find_double_charges(settlements))
    for settlement in settlements:
        audit.reports.append(
            audit_settlement(
                settlement,
                held,
                input_price=service.input_price,
                output_price=service.output_price,
                signer=service.tee_signer_address,
                service_signer=response_signer(service),
                earlier=settlements,
            )
        )
    return audit
