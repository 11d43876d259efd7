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
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from zgserve.broker.settlement.policy import MAX_BATCH, PolicyConfig
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
    max_batches_per_round: int = Field(default=10, ge=1)
    # the loop
    backoff_initial_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=60.0, gt=0)
    min_round_gap_seconds: float = Field(default=0.5, ge=0, description="floor between two rounds")
    # several processes on one database
    lease_seconds: float = Field(default=30.0, gt=0)
    # alerting: a preview failure of a user (bad signer/signature) is retried after this long
    failure_cooldown_seconds: float = Field(default=60.0, ge=0)

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
            lines = [f"  settlement.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            raise ConfigError("invalid settlement configuration:\n" + "\n".join(lines)) from None
