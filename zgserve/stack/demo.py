"""The demo user's journey on a fresh local network, and what it found.

A user who owns nothing but a funded key and this package:

1. funds a ledger and moves part of it to the provider's account;
2. checks the provider: the broker's ``/v1/quote`` binds the on-chain TEE signer, and
   the verifiable service's attestation (fresh nonce) names the signing address that
   the on-chain service declares for responses;
3. sends one streamed and one non-streamed chat through the broker with the ``openai``
   package, and checks each signature against the exact bytes sent and received and
   the attested address;
4. when the provider lists media models, one request each (:mod:`~zgserve.stack.demo_media`);
5. has the provider settle (``POST /v1/settle``), then audits the settlement: the
   provider's on-chain earnings, the fees the broker recorded, the receipts and proofs.

Nothing is hidden: a check that could not pass in simulated TEE mode (hardware evidence)
is reported as such, and :attr:`DemoReport.ok` is true only when everything else passed.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from zgserve.chain.client import ChainClient
from zgserve.chain.types import Account, Service
from zgserve.client.chat import quote_signer
from zgserve.client.openai_client import Exchange, ExchangeRecorder
from zgserve.client.provider import response_signer, sdk_would_verify
from zgserve.client.responses import answer_text, usage
from zgserve.client.settlements import SettlementAudit, audit_settlements
from zgserve.client.user import UserClient
from zgserve.client.verify import Check, Verification, verify_report_local
from zgserve.common.money import OG
from zgserve.stack.demo_media import MEDIA_STEPS, MediaDemo, MediaOutcome
from zgserve.stack.steps import Steps

LEDGER_DEPOSIT = 10 * OG
PROVIDER_TRANSFER = 2 * OG
MAX_TOKENS = 48
PROMPT = "In two short sentences: why should an AI answer come with a signature?"
# Checks that need TEE hardware; in simulated mode they fail by design and are shown apart.
QUOTE_SIGNER_CHECK = "/v1/quote report_data is the on-chain TEE signer (the SDK's verifyService check)"
# A simulated TEE binds nothing in its quote (so that no official verifier takes it for a real
# one): these checks can pass on hardware only.
HARDWARE_CHECKS = frozenset({"TEE hardware evidence", "GPU evidence present", QUOTE_SIGNER_CHECK})
_ADMIN_TIMEOUT = aiohttp.ClientTimeout(total=120)


@dataclass
class ChatOutcome:
    """One chat: what came back, what it cost, and whether its signature checked out."""

    kind: str
    answer: str
    chat_id: str
    prompt_tokens: int
    completion_tokens: int
    fee: int  # prompt x inputPrice + completion x outputPrice, at the model's listed prices
    recorded_fee: int | None  # what the broker recorded for this response id
    seconds: float
    verification: Verification

    @property
    def ok(self) -> bool:
        return self.verification.verified and bool(self.answer) and self.recorded_fee == self.fee


@dataclass
class SettlementOutcome:
    response: dict[str, Any]
    paid: int  # sum of ``paid`` in the broker's answer
    earned: int  # provider wallet: balance change + gas of the settlement transactions
    account_decrease: int  # how much the user's sub-account went down
    audit: SettlementAudit = field(default_factory=SettlementAudit)

    @property
    def receipts(self) -> int:
        return sum(r.receipts for r in self.audit.reports)

    @property
    def receipts_verified(self) -> int:
        return sum(r.receipts for r in self.audit.reports if r.ok) if self.audit.ok else 0

    @property
    def statuses(self) -> list[str]:
        return [str(s.get("status")) for s in self.response.get("settlements", [])]


@dataclass
class DemoReport:
    user: str
    provider: str
    model: str
    deposit: int = 0
    transferred: int = 0
    listed: bool = False
    simulated: bool = True
    attestation: Verification = field(default_factory=Verification)
    hardware: list[Check] = field(default_factory=list)
    chats: list[ChatOutcome] = field(default_factory=list)
    media: list[MediaOutcome] = field(default_factory=list)
    settlement: SettlementOutcome | None = None
    first_verified_s: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def fees(self) -> int:
        """Every answer's fee by its billing rule: the chats and the media."""
        return sum(c.fee for c in self.chats) + sum(m.fee for m in self.media)

    @property
    def ok(self) -> bool:
        return not self.problems


def _split_hardware(result: Verification, simulated: bool) -> tuple[Verification, list[Check]]:
    """Checks that need TEE hardware go apart when the stack runs simulated; the rest stays."""
    kept = Verification()
    hardware = []
    for check in result.checks:
        if simulated and check.name in HARDWARE_CHECKS:
            hardware.append(check)
        else:
            kept.checks.append(check)
    return kept, hardware


class DemoUser:
    """Runs the journey for one user key against one provider; see the module doc."""

    def __init__(
        self,
        chain: ChainClient,
        user_key: str,
        provider: str,
        broker_url: str,
        *,
        steps: Steps,
        launched_at: float,
    ) -> None:
        self.user = UserClient(chain, user_key)
        self.provider = provider
        self.broker_url = broker_url
        self.steps = steps
        self.launched_at = launched_at
        self.report = DemoReport(user=self.user.address, provider=provider, model="")
        self.recorder = ExchangeRecorder()  # the exact bytes of every exchange, for checks and audit
        self.listed: list[dict[str, Any]] = []  # the provider's /v1/models

    async def run(self) -> DemoReport:
        """The journey; a step that raises ends it, and the report says where and why."""
        async with self.user, aiohttp.ClientSession(timeout=_ADMIN_TIMEOUT) as http:
            try:
                service = await self._fund()
                attested = await self._attest(service)
                await self._chats(service, attested, http)
                await self._media(http)
                await self._settle(http)
            except Exception as exc:  # the report is the place for it; the stack stays up to inspect
                self._problem(f"the journey stopped: {type(exc).__name__}: {exc}")
        return self.report

    def _problem(self, text: str) -> None:
        self.report.problems.append(text)

    async def _fund(self) -> Service:
        report = self.report
        async with self.steps.step("Demo user funds a ledger and the provider's account") as step:
            await self.user.create_ledger(LEDGER_DEPOSIT)
            listed = await self.user.list_providers()
            report.listed = any(s.provider.lower() == self.provider.lower() for s in listed)
            if not report.listed:
                self._problem("the provider is not listed (is its TEE signer acknowledged?)")
            await self.user.transfer(self.provider, PROVIDER_TRANSFER)
            await self.user.acknowledge(self.provider)
            report.deposit, report.transferred = LEDGER_DEPOSIT, PROVIDER_TRANSFER
            service = await self.user.get_service(self.provider, fresh=True)
            report.model = service.model
            step.detail(f"ledger {LEDGER_DEPOSIT // OG} 0G, {PROVIDER_TRANSFER // OG} 0G to the provider")
        return service

    async def _attest(self, service: Service) -> str:
        """The attested signing address, after checking it against the chain."""
        async with self.steps.step("Demo user checks the provider's attestation (fresh nonce)") as step:
            http = await self.user.provider_http(self.provider)
            quote = await http.quote()
            nonce = secrets.token_bytes(32)
            report = await http.attestation_report(nonce)
            expected = response_signer(service)
            simulated = bool(report.get("simulated") or report.get("tee") == "simulated")
            simulated = simulated or bool(quote.get("simulated"))
            checks = verify_report_local(report, nonce, expected_address=expected)
            signer = quote_signer(quote)
            checks.add(
                QUOTE_SIGNER_CHECK,
                signer is not None and signer.lower() == service.tee_signer_address.lower(),
                str(signer),
            )
            checks.add("the contract owner acknowledged the TEE signer", service.tee_signer_acknowledged)
            reason = sdk_would_verify(service)
            checks.add("the SDK's processResponse would check signatures", reason is None, reason or "")
            kept, hardware = _split_hardware(checks, simulated)
            self.report.simulated, self.report.attestation, self.report.hardware = simulated, kept, hardware
            for failed in kept.failed:
                self._problem(f"attestation: {failed.name}: {failed.detail}")
            attested = str(report.get("signing_address", ""))
            step.detail(f"signing address {attested}" + (" (SIMULATED TEE)" if simulated else ""))
        return attested

    async def _catalog(self, http: aiohttp.ClientSession, service: Service) -> list[tuple[str, int, int]]:
        """``(model, input price, output price)`` of every model the provider lists (``/v1/models``)."""
        async with http.get(self.broker_url + "/v1/models") as resp:
            listed = (await resp.json())["data"] if resp.status == 200 else []
        self.listed = [m for m in listed if isinstance(m, dict) and isinstance(m.get("pricing"), dict)]
        models = [
            (str(m["id"]), int(m["pricing"]["prompt"]), int(m["pricing"]["completion"]))
            for m in self.listed
            if m.get("type") not in MEDIA_STEPS
        ]
        if not models:
            self._problem(f"GET /v1/models answered {resp.status} with no priced model")
            models = [(service.model, service.input_price, service.output_price)]
        return models

    async def _chats(self, service: Service, attested: str, http: aiohttp.ClientSession) -> None:
        recorder = self.recorder
        client = await self.user.async_openai(self.provider, recorder=recorder, max_retries=0)
        messages: list[Any] = [{"role": "user", "content": PROMPT}]
        catalog = await self._catalog(http, service)
        # The registered model streamed and not; every other model of the catalog once.
        plan = [(service.model, True), (service.model, False)]
        plan += [(model, False) for model, _, _ in catalog if model != service.model]
        prices = {model: (input_price, output_price) for model, input_price, output_price in catalog}
        try:
            for model, stream in plan:
                kind = ("streamed" if stream else "non-streamed") + (
                    "" if model == service.model else f" ({model})"
                )
                async with self.steps.step(f"Demo user sends a {kind} chat and verifies it") as step:
                    started = time.monotonic()
                    if stream:
                        chunks = await client.chat.completions.create(
                            model=model,
                            messages=messages,
                            max_tokens=MAX_TOKENS,
                            stream=True,
                            stream_options={"include_usage": True},
                        )
                        async for _ in chunks:
                            pass
                    else:
                        await client.chat.completions.create(
                            model=model, messages=messages, max_tokens=MAX_TOKENS
                        )
                    price = prices.get(model, (service.input_price, service.output_price))
                    outcome = await self._check_chat(
                        kind, recorder.last, service, price, attested, started, http
                    )
                    step.detail(
                        f"{outcome.prompt_tokens}+{outcome.completion_tokens} tokens, "
                        + ("signature verified" if outcome.verification.verified else "NOT verified")
                    )
        finally:
            await client.close()

    async def _check_chat(
        self,
        kind: str,
        exchange: Exchange,
        service: Service,
        price: tuple[int, int],
        attested: str,
        started: float,
        http: aiohttp.ClientSession,
    ) -> ChatOutcome:
        verification = await self.user.verify_response(self.provider, exchange)
        # verify_response compares with the on-chain address; the attested one must be the same key.
        verification.add(
            "signer is the address the attestation report names",
            bool(attested) and attested.lower() == response_signer(service).lower(),
            attested,
        )
        tokens = usage(exchange) or {}
        prompt, completion = tokens.get("prompt_tokens", 0), tokens.get("completion_tokens", 0)
        chat_id = exchange.chat_id or ""
        outcome = ChatOutcome(
            kind=kind,
            answer=answer_text(exchange).strip(),
            chat_id=chat_id,
            prompt_tokens=prompt,
            completion_tokens=completion,
            fee=prompt * price[0] + completion * price[1],
            recorded_fee=await self._recorded_fee(http, chat_id),
            seconds=time.monotonic() - started,
            verification=verification,
        )
        self.report.chats.append(outcome)
        if outcome.verification.verified and self.report.first_verified_s is None:
            self.report.first_verified_s = time.monotonic() - self.launched_at
        for failed in [*verification.failed, *verification.not_checked]:
            self._problem(f"{kind} chat: {failed.name}: {failed.detail}")
        if not outcome.answer:
            self._problem(f"{kind} chat: the answer is empty")
        if outcome.recorded_fee != outcome.fee:
            recorded = outcome.recorded_fee
            self._problem(f"{kind} chat: the broker recorded {recorded} neuron, the usage says {outcome.fee}")
        return outcome

    async def _media(self, http: aiohttp.ClientSession) -> None:
        async def recorded(response_id: str) -> int | None:
            return await self._recorded_fee(http, response_id)

        runner = MediaDemo(
            self.user, self.provider, steps=self.steps, recorded_fee=recorded, problem=self._problem
        )
        self.report.media = await runner.run(m for m in self.listed if m.get("type") in MEDIA_STEPS)

    async def _recorded_fee(self, http: aiohttp.ClientSession, chat_id: str) -> int | None:
        """The fee the broker recorded for ``chat_id`` (admin API, loopback)."""
        params = {"user": self.user.address.lower(), "responseId": chat_id}
        async with http.get(self.broker_url + "/v1/request", params=params) as resp:
            if resp.status != 200:
                self._problem(f"GET /v1/request answered {resp.status}")
                return None
            items = (await resp.json())["items"]
        return sum(int(item["fee"]) for item in items) if items else None

    async def _account(self) -> Account:
        account = await self.user.get_account(self.provider)
        assert account is not None
        return account

    async def _settle(self, http: aiohttp.ClientSession) -> None:
        chain = self.user.chain
        async with self.steps.step("Provider settles on-chain; the user audits the receipts") as step:
            before = await self._account()
            balance_before = await chain.balance(self.provider)
            async with http.post(self.broker_url + "/v1/settle", json={"users": [self.user.address]}) as resp:
                body: dict[str, Any] = await resp.json()
                if resp.status != 200:
                    self._problem(f"POST /v1/settle answered {resp.status}: {body}")
                    return
            gas = 0
            for tx in body.get("transactions", []):
                receipt = await chain.get_receipt(tx)
                gas += receipt.fee if receipt is not None else 0
            earned = await chain.balance(self.provider) - balance_before + gas
            after = await self._account()
            entries = body.get("settlements", [])
            outcome = SettlementOutcome(
                response=body,
                paid=sum(int(e.get("paid", 0)) for e in entries),
                earned=earned,
                account_decrease=before.balance - after.balance,
            )
            self.report.settlement = outcome
            if not entries:
                self._problem(f"the settlement sent nothing: {body}")
            # The user's own audit: receipts and proofs from the broker, matched with its answers.
            held = [m.held for m in self.report.media if m.held is not None]
            outcome.audit = await audit_settlements(self.user, self.provider, self.recorder.exchanges, held)
            self._judge_settlement(outcome)
            txs = len(body.get("transactions", []))
            step.detail(f"{txs} transaction(s), statuses {', '.join(outcome.statuses)}")

    def _judge_settlement(self, outcome: SettlementOutcome) -> None:
        fees = self.report.fees
        if any(s != "success" for s in outcome.statuses):
            self._problem(f"settlement statuses: {outcome.statuses}")
        if outcome.paid != fees:
            self._problem(f"settled {outcome.paid} neuron, the answers cost {fees}")
        if outcome.earned != fees:
            self._problem(f"the provider earned {outcome.earned} neuron on-chain, the answers cost {fees}")
        if outcome.account_decrease != fees:
            self._problem(f"the user's account went down by {outcome.account_decrease}, not {fees}")
        audited = {str(s["nonce"]) for s in outcome.audit.settlements}
        for entry in outcome.response.get("settlements", []):
            if str(entry["nonce"]) not in audited:
                self._problem(f"settlement {entry['nonce']} is missing from the user's settlement history")
        for audit_report in outcome.audit.reports:
            for problem in audit_report.problems:
                self._problem(f"settlement audit: {problem}")
        for charged in outcome.audit.double_charges:
            self._problem(f"settlement audit: {charged} was charged twice")
