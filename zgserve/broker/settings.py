"""Broker configuration: the official provider YAML keys, environment overrides, strict validation.

A provider file looks like the official broker's (``servingUrl``, ``privateKeys``,
``targetUrl``, ``model``, ``inputPrice``, ``outputPrice``) plus sections for the
network, the database, authentication caching, billing, the admin API and the
settlement engine. Unknown keys stop start-up with a message that names them.

Environment variables override the file: ``ZGSERVE_BROKER__<KEY>[__<SUBKEY>...]``,
matched case-insensitively against the YAML key, e.g.
``ZGSERVE_BROKER__INPUTPRICE=1000`` or ``ZGSERVE_BROKER__DATABASE__URL=...``.
Values are parsed as YAML scalars, so lists can be given as ``[a, b]``.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from zgserve.broker import official_config
from zgserve.broker.settlement.config import SettlementConfig
from zgserve.common import money
from zgserve.common.errors import ConfigError

ENV_PREFIX = "ZGSERVE_BROKER__"
DEFAULT_STAKE = 100 * money.OG


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


def _neuron(value: Any) -> int:
    if isinstance(value, float):
        raise ValueError("amounts are integers in neuron (or decimal strings), not floats")
    return money.parse(value)


class NetworkSettings(_Section):
    """Where the contracts live: explicit values, or a devnet deployment file."""

    rpc_url: str | None = None
    chain_id: int | None = None
    ledger_address: str | None = None
    inference_address: str | None = None
    deployment: Path | None = Field(default=None, description="deployment JSON written by `zgserve devnet`")
    service_name: str = "inference-v1.0"
    explorer_url: str | None = Field(
        default=None, description="block explorer of this chain (https://...); the dashboard links to it"
    )

    @field_validator("explorer_url")
    @classmethod
    def _explorer(cls, value: str | None) -> str | None:
        # The dashboard builds links from it: only plain web URLs, never javascript: or data:.
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// or http://")
        return value.rstrip("/") if value else None


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: int = 3080
    max_body_bytes: int = Field(default=1 << 20, gt=0)
    max_upload_bytes: int = Field(
        default=16 << 20, gt=0, description="the most bytes of one upload (audio, images to edit)"
    )
    allow_origins: list[str] = Field(default_factory=lambda: ["*"])


class UpstreamSettings(_Section):
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=600.0, gt=0)
    max_connections: int = Field(default=256, gt=0)
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="added to every upstream request")


class DatabaseSettings(_Section):
    url: str = "sqlite+aiosqlite:///./zgserve-broker.db"
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    commit_batch: int = Field(default=256, gt=0, description="max records per group commit")
    pool_size: int = Field(default=5, gt=0)
    retry_seconds: float = Field(
        default=5.0, ge=0, description="a fee record is retried this long while the database reconnects"
    )


class AuthSettings(_Section):
    account_cache_seconds: float = Field(
        default=3.0, ge=0, description="how long a chain account read is reused"
    )
    max_stale_seconds: float = Field(
        default=30.0, ge=0, description="serve from cache this long if the RPC fails"
    )
    token_cache_size: int = Field(default=10_000, gt=0)
    token_cache_bytes: int = Field(
        default=16 << 20, gt=0, description="bound on the memory of verified tokens kept"
    )


class BillingSettings(_Section):
    max_output_tokens: int = Field(
        default=4096,
        gt=0,
        description="the most output tokens one answer may have (reserved when max_tokens is absent)",
    )
    max_choices: int = Field(default=8, gt=0, le=128, description="the most answers (n, best_of) per request")
    input_bytes_per_token: int = Field(
        default=1, gt=0, description="input estimate for admission: bytes / this"
    )
    min_locked_balance: int = Field(
        default=0, description="extra neuron a user must keep beyond the estimate"
    )
    shared_admission: bool = Field(
        default=True,
        description="on PostgreSQL: admit against reservations shared by every replica (exact across"
        " replicas; one database round trip per request). SQLite is one process and never needs it",
    )
    admission_budget_requests: int = Field(
        default=16,
        ge=0,
        le=1024,
        description="shared admission: a replica serving a user's requests holds this many requests'"
        " worth at once while the user has room for four times as much (0: every request on its own)",
    )
    reservation_ttl_seconds: float = Field(
        default=30.0, gt=1, description="a dead replica's holds lapse after this long"
    )

    @field_validator("min_locked_balance", mode="before")
    @classmethod
    def _check_min(cls, value: Any) -> int:
        return _neuron(value)


class AdminSettings(_Section):
    token: SecretStr | None = Field(
        default=None, description="when set, admin routes need it from any address"
    )


class MetricsSettings(_Section):
    """Who may read ``/metrics`` (it shows fees and users' activity)."""

    require_token: bool | None = Field(
        default=None,
        description="/metrics needs the admin token; unset: needed whenever admin.token is set",
    )
    listen: str | None = Field(
        default=None, description="host:port to serve /metrics on instead of the main port"
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is not None:
            split_listen(value)
        return value

    def token_required(self, admin_token_set: bool) -> bool:
        # An admin token means the broker's port is open beyond loopback: metrics follow suit.
        return admin_token_set if self.require_token is None else self.require_token

    def listen_address(self) -> tuple[str, int] | None:
        return None if self.listen is None else split_listen(self.listen)


def split_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9100`` for IPv6) → ``(host, port)``; ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port, got {value!r}")
    return host, int(port)


class LimitsSettings(_Section):
    """Rate and concurrency limits (the official ``concurrencyLimit`` keys); 0 turns one off."""

    max_global_concurrent: int = Field(default=20, ge=0, description="requests in flight in all")
    max_per_user_concurrent: int = Field(default=5, ge=0, description="requests in flight per user")
    per_user_rpm: int = Field(default=30, ge=0, alias="perUserRPM", description="requests per minute")
    per_user_burst: int = Field(default=5, ge=0, description="requests at once before perUserRPM applies")
    per_user_tpm: int = Field(default=0, ge=0, alias="perUserTPM", description="tokens per minute")
    per_user_tpm_burst: int = Field(
        default=0, ge=0, alias="perUserTPMBurst", description="0: a sixth of perUserTPM"
    )
    per_user_images_per_minute: int = Field(
        default=0, ge=0, alias="perUserImagesPerMinute", description="images asked for per minute (0: off)"
    )
    # Off by default: keyed on the socket peer, so behind a load balancer one limit would
    # cover every user (there, limit per IP in the balancer). Suggested: 15 and 10.
    per_ip_proxy_rps: float = Field(default=0, ge=0, description="requests/s per IP on /v1/proxy")
    per_ip_other_rps: float = Field(default=0, ge=0, description="requests/s per IP on other routes")
    idle_seconds: float = Field(
        default=60.0, ge=0, description="a stream whose client reads nothing this long is cut (0: never)"
    )
    redis_url: str | None = Field(default=None, description="share the counters across replicas")
    slot_ttl_seconds: float = Field(
        default=30.0, gt=0, description="a dead replica's concurrency slots lapse after this"
    )
    whitelist: list[str] = Field(
        default_factory=list, description="addresses served without limits or billing (monitoring)"
    )

    @field_validator("whitelist")
    @classmethod
    def _check_whitelist(cls, value: list[str]) -> list[str]:
        for address in value:
            text = address.removeprefix("0x")
            if len(text) != 40 or not all(c in "0123456789abcdefABCDEF" for c in text):
                raise ValueError(f"{address!r} is not an address")
        return ["0x" + a.removeprefix("0x").lower() for a in value]


class RegistrationSettings(_Section):
    enabled: bool = True
    service_type: Literal["chatbot", "text-to-image", "image-editing", "speech-to-text", "text-to-speech"] = (
        "chatbot"
    )
    verifiability: str = "TeeML"
    stake: int = DEFAULT_STAKE
    additional_info: dict[str, Any] = Field(default_factory=dict, description="extra keys for additionalInfo")
    tee_address: str | None = Field(
        default=None, description="service signing address; read from it if unset"
    )

    @field_validator("stake", mode="before")
    @classmethod
    def _check_stake(cls, value: Any) -> int:
        return _neuron(value)


class TeeSettings(_Section):
    backend: str = "auto"
    key_file: Path | None = Field(
        default=Path("zgserve-broker-tee-keys.json"), description="simulated mode: where its keys are kept"
    )


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(default=False, alias="json")


class _EnvOverrides(PydanticBaseSettingsSource):
    """``ZGSERVE_BROKER__A__B=value`` → ``{"a": {"b": value}}`` with keys matched to the model's aliases."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, raw in os.environ.items():
            if not name.upper().startswith(ENV_PREFIX):
                continue
            parts = [p for p in name[len(ENV_PREFIX) :].split("__") if p]
            if not parts:
                continue
            keys = _resolve_keys(self.settings_cls, parts, name)
            node = out
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else raw
        return out


def _resolve_keys(model: type[BaseModel], parts: list[str], env_name: str) -> list[str]:
    keys: list[str] = []
    current: type[BaseModel] | None = model
    for part in parts:
        if current is None:  # inside a free-form mapping: keep the key as given
            keys.append(part)
            continue
        match = None
        for fname, finfo in current.model_fields.items():
            alias = finfo.alias or fname
            if part.lower() in (alias.lower(), fname.lower(), fname.replace("_", "").lower()):
                match = (alias, finfo)
                break
        if match is None:
            raise ConfigError(f"environment variable {env_name}: unknown setting {part!r}")
        keys.append(match[0])
        ann = match[1].annotation
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return keys


class TierSettings(_Section):
    """One pricing tier (the official ``tieredPricing`` entry)."""

    max_input_tokens: int = Field(ge=0)
    input_multiplier: int = Field(default=1, ge=0)
    input_multiplier_denominator: int = Field(default=1, ge=1)
    output_multiplier: int = Field(default=1, ge=0)
    output_multiplier_denominator: int = Field(default=1, ge=1)


class CacheBillingSettings(_Section):
    divisor: int = Field(ge=1, description="cached prompt tokens cost inputPrice / divisor")


class ModelSettings(_Section):
    """One model of the catalog (``models[]``; the official ``service.modelPricing[]`` maps here)."""

    id: str = Field(min_length=1, max_length=256)
    input_price: int
    output_price: int
    aliases: list[str] = Field(default_factory=list)
    upstream_model: str | None = None
    target_url: str | None = Field(
        default=None, description="its own verifiable service (default: targetUrl)"
    )
    max_output_tokens: int | None = Field(default=None, gt=0)
    type: str | None = Field(default=None, description="its service type (default: registration.serviceType)")
    context_length: int | None = Field(default=None, gt=0)
    canonical_id: str | None = None
    tiered_pricing: list[TierSettings] = Field(default_factory=list)
    cache_token_billing: CacheBillingSettings | None = None
    model_info: dict[str, Any] = Field(default_factory=dict)
    size_multipliers: dict[str, str] = Field(
        default_factory=dict,
        description="images: price multiplier per size (e.g. {'1024x1024': '1.5'}), decimal strings",
    )
    max_audio_seconds: int = Field(
        default=600, gt=0, le=86_400, description="text-to-speech: the most seconds reserved for one answer"
    )

    @field_validator("size_multipliers")
    @classmethod
    def _check_multipliers(cls, value: dict[str, str]) -> dict[str, str]:
        for size, text in value.items():
            try:
                number = Decimal(text)
            except (InvalidOperation, TypeError):
                raise ValueError(f"the multiplier of {size!r} must be a decimal string") from None
            if not number.is_finite() or number <= 0 or number > 1000:
                raise ValueError(f"the multiplier of {size!r} must be above 0 and at most 1000")
        return {size.strip().lower(): text for size, text in value.items()}

    @field_validator("input_price", "output_price", mode="before")
    @classmethod
    def _check_prices(cls, value: Any) -> int:
        return _neuron(value)

    @field_validator("upstream_model")
    @classmethod
    def _check_upstream_model(cls, value: str | None) -> str | None:
        # Sent to the service as a header value: printable text only, never a line break.
        if value is not None and not (0 < len(value) <= 256 and value.isprintable()):
            raise ValueError("must be 1-256 printable characters")
        return value

    @field_validator("target_url")
    @classmethod
    def _check_target(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        value = value.rstrip("/")
        return value if value.endswith("/v1") else value + "/v1"


class BrokerSettings(BaseSettings):
    """Everything the broker needs; built once by :func:`load_settings`."""

    model_config = SettingsConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, env_prefix=ENV_PREFIX
    )

    serving_url: str = Field(description="public URL written on-chain; users reach the broker here")
    target_url: str = Field(
        description="the verifiable service, e.g. http://127.0.0.1:8000 (kept as its OpenAI base: .../v1)"
    )
    model: str
    input_price: int = Field(description="neuron per input token")
    output_price: int = Field(description="neuron per output token")
    models: list[ModelSettings] = Field(
        default_factory=list, description="the catalog; empty: one model, `model` at inputPrice/outputPrice"
    )
    private_keys: list[SecretStr] = Field(default_factory=list, description="[0] is the provider wallet")
    network: NetworkSettings = NetworkSettings()
    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    database: DatabaseSettings = DatabaseSettings()
    auth: AuthSettings = AuthSettings()
    billing: BillingSettings = BillingSettings()
    admin: AdminSettings = AdminSettings()
    metrics: MetricsSettings = MetricsSettings()
    limits: LimitsSettings = LimitsSettings()
    registration: RegistrationSettings = RegistrationSettings()
    tee: TeeSettings = TeeSettings()
    # The settlement engine's own options, validated by its model (zgserve.broker.settlement.config).
    settlement: SettlementConfig = SettlementConfig()
    logging: LoggingSettings = LoggingSettings()

    @field_validator("input_price", "output_price", mode="before")
    @classmethod
    def _check_prices(cls, value: Any) -> int:
        return _neuron(value)

    @field_validator("private_keys")
    @classmethod
    def _check_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for i, key in enumerate(keys):
            text = key.get_secret_value().removeprefix("0x")
            try:
                ok = len(bytes.fromhex(text)) == 32
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"privateKeys[{i}] is not a 32-byte hex private key")
        return keys

    @model_validator(mode="after")
    def _metrics_token_needs_admin_token(self) -> BrokerSettings:
        if self.metrics.require_token and self.admin.token is None:
            raise ValueError("metrics.requireToken needs admin.token to be set")
        return self

    @field_validator("serving_url", "target_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("target_url")
    @classmethod
    def _openai_base(cls, value: str) -> str:
        # Operators write the service's address (as the README and the official broker's examples
        # do) or its OpenAI base; both mean the same service, whose routes live under /v1.
        return value if value.endswith("/v1") else value + "/v1"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (passed as init values).
        return (_EnvOverrides(settings_cls), init_settings)

    def provider_key(self) -> str:
        """The provider wallet's private key (hex), from ``privateKeys[0]`` or the deployment file."""
        if self.private_keys:
            return self.private_keys[0].get_secret_value()
        deployment = self.load_deployment()
        key = deployment.get("provider", {}).get("privateKey") if deployment else None
        if not key:
            raise ConfigError("privateKeys is empty and no deployment file gives a provider key")
        return str(key)

    def load_deployment(self) -> dict[str, Any] | None:
        """The devnet deployment JSON, if ``network.deployment`` is set."""
        if self.network.deployment is None:
            return None
        try:
            data = json.loads(Path(self.network.deployment).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"network.deployment: cannot read {self.network.deployment}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"network.deployment: {self.network.deployment} is not a JSON object")
        return data

    def resolved_network(self) -> ResolvedNetwork:
        """Network values with the deployment file filling what the config leaves out."""
        dep = self.load_deployment() or {}
        contracts = dep.get("contracts", {}) if isinstance(dep.get("contracts"), dict) else {}
        net = self.network
        values = {
            "rpc_url": net.rpc_url or dep.get("rpcUrl"),
            "chain_id": net.chain_id or dep.get("chainId"),
            "ledger_address": net.ledger_address or contracts.get("ledger"),
            "inference_address": net.inference_address or contracts.get("inference"),
        }
        missing = [to_camel(k) for k, v in values.items() if not v]
        if missing:
            raise ConfigError(f"network: missing {', '.join(missing)} (give them or a deployment file)")
        return ResolvedNetwork(
            rpc_url=str(values["rpc_url"]),
            chain_id=int(values["chain_id"]),  # type: ignore[arg-type]
            ledger_address=str(values["ledger_address"]),
            inference_address=str(values["inference_address"]),
            service_name=dep.get("serviceName") or net.service_name,
        )


class ResolvedNetwork(BaseModel):
    rpc_url: str
    chain_id: int
    ledger_address: str
    inference_address: str
    service_name: str


def load_settings(path: str | Path | None = None, **overrides: Any) -> BrokerSettings:
    """Read the YAML file (if any), apply ``overrides`` then the environment, validate strictly.

    Raises :class:`ConfigError` with one line per problem, each naming the key.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must be a mapping at the top level")
        # The official broker's layout is translated; its keys we lack are named in one warning.
        data.update(official_config.adopt(loaded or {}, source=path))
    data.update(overrides)
    try:
        return BrokerSettings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _describe(exc: ValidationError, path: str | Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid broker configuration{where}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
