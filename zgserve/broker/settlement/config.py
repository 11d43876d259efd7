"""Settlement engine options: the broker's ``settlement:`` YAML section, validated strictly.

Keys are camelCase like the rest of the broker configuration; every one has a
default, so ``settlement: {enabled: true}`` is a complete configuration::

    settlement:
      enabled: true
      intervalSeconds: 60        # how often the loop looks at the backlog
      settleOnShutdown: false    # settle everything on a clean stop
      depositShareBps: 5000      # settle a user at 50 % of their sub-account balance
      refundMarginSeconds: 900   # ... or when a refund unlocks within 15 min
      maxAgeSeconds: 86400       # ... or when a fee is a day old
      minFeeGasMultiple: 2       # piggyback only users worth 2x their marginal gas
      gasPriceCap: null          # neuron/gas; above it only hard deadlines are sent
      receiptTimeoutSeconds: 60  # how long one round waits for a receipt
      replaceAfterSeconds: 120   # replace a transaction still pending after this long
      replaceBumpBps: 1250       # ... paying at least 12.5 % more per gas than before
      deadlineGasPriceCap: null  # neuron/gas; replacements of hard deadlines may go this high

**Stuck transactions.** While a batch's transaction is pending no new batch starts.
Each round re-broadcasts it and waits up to ``receiptTimeoutSeconds`` for it; in the
first round at least ``replaceAfterSeconds`` after its first broadcast it is replaced
instead: the same call with the same sender nonce at ``max(network price, previous
price x (1 + replaceBumpBps/10000))``, journaled before it is broadcast (see
``replacement``). Replacements stop at ``gasPriceCap`` -- at ``deadlineGasPriceCap``
instead for a batch carrying a hard deadline (a refund about to unlock, ``POST
/v1/settle``, shutdown) -- and then wait, with an alert, rather than pay more. With no
cap at all, a transaction nothing mines gets one bump per ``replaceAfterSeconds``; set
``gasPriceCap`` in production. A hard deadline's *first* transaction is sent at the
network's price even above ``gasPriceCap``; only its replacements are bounded by these
keys.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from zgserve.broker.settlement.policy import MAX_BATCH, PolicyConfig
from zgserve.broker.settlement.replacement import MIN_BUMP_BPS, ReplacementPolicy
from zgserve.common.errors import ConfigError


class SettlementConfig(BaseModel):
    """Everything the engine reads; see the module doc for the YAML form."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    enabled: bool = True
    interval_seconds: float = Field(default=60.0, gt=0)
    settle_on_shutdown: bool = False
    # policy (see zgserve.broker.settlement.policy)
    deposit_share_bps: int = Field(default=5_000, gt=0, le=10_000)
    refund_margin_seconds: int = Field(default=900, ge=0)
    max_age_seconds: int = Field(default=86_400, gt=0)
    min_fee_gas_multiple: int = Field(default=2, ge=0)
    marginal_gas_per_entry: int = Field(default=60_000, gt=0)
    batch_size: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)
    debt_retry_seconds: int = Field(default=300, ge=0)
    # transactions
    gas_price_cap: int | None = Field(default=None, gt=0, description="neuron per gas")
    receipt_timeout_seconds: float = Field(default=60.0, gt=0)
    # replacing a stuck transaction (see zgserve.broker.settlement.replacement)
    replace_after_seconds: float = Field(default=120.0, gt=0)
    replace_bump_bps: int = Field(default=MIN_BUMP_BPS, ge=MIN_BUMP_BPS, le=100_000)
    deadline_gas_price_cap: int | None = Field(default=None, gt=0, description="neuron per gas")
    max_batches_per_round: int = Field(default=10, ge=1)
    # the loop
    backoff_initial_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=60.0, gt=0)
    min_round_gap_seconds: float = Field(default=0.5, ge=0, description="floor between two rounds")
    # several processes on one database
    lease_seconds: float = Field(default=30.0, gt=0)
    # alerting: a preview failure of a user (bad signer/signature) is retried after this long
    failure_cooldown_seconds: float = Field(default=60.0, ge=0)

    @model_validator(mode="after")
    def _deadline_cap_not_below_cap(self) -> SettlementConfig:
        cap, deadline = self.gas_price_cap, self.deadline_gas_price_cap
        if cap is not None and deadline is not None and deadline < cap:
            raise ValueError("deadlineGasPriceCap is below gasPriceCap")
        return self

    def replacement(self, chain_cap: int | None = None) -> ReplacementPolicy:
        """The replacement policy; ``chain_cap`` is the chain client's own gas price cap."""
        return ReplacementPolicy(
            after_s=self.replace_after_seconds,
            bump_bps=self.replace_bump_bps,
            cap=self.gas_price_cap,
            deadline_cap=self.deadline_gas_price_cap,
            chain_cap=chain_cap,
        )

    def policy(self) -> PolicyConfig:
        return PolicyConfig(
            deposit_share_bps=self.deposit_share_bps,
            refund_margin_s=self.refund_margin_seconds,
            max_age_s=self.max_age_seconds,
            min_fee_gas_multiple=self.min_fee_gas_multiple,
            marginal_gas_per_entry=self.marginal_gas_per_entry,
            batch_size=self.batch_size,
            debt_retry_s=self.debt_retry_seconds,
        )

    def backoff(self, failures: int) -> float:
        """Delay after ``failures`` consecutive failed rounds (1-based), capped."""
        exp = min(max(failures - 1, 0), 30)
        return float(min(self.backoff_max_seconds, self.backoff_initial_seconds * 2**exp))

    @classmethod
    def from_settings(cls, section: Any) -> SettlementConfig:
        """Build from the broker's ``settings.settlement`` (a model, a mapping, or None)."""
        if section is None:
            return cls()
        if isinstance(section, SettlementConfig):
            return section
        if isinstance(section, BaseModel):
            data = section.model_dump()
        elif isinstance(section, dict):
            data = dict(section)
        else:
            raise ConfigError(f"settlement: expected a mapping, got {type(section).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = [f"  {'.'.join(('settlement', *map(str, e['loc'])))}: {e['msg']}" for e in exc.errors()]
            raise ConfigError("invalid settlement configuration:\n" + "\n".join(lines)) from None
