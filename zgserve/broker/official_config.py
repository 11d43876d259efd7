"""The official 0G broker's ``config.yaml``, read as it is and translated onto our settings.

A provider migrating from the official broker (``0g-serving-broker``, ``api/inference``)
brings a file with nested sections (``service.*``, ``network.*``, ``database.dsn``,
``interval.*`` ...). :func:`translate` maps every key we implement onto the keys of
:class:`~zgserve.broker.settings.BrokerSettings` and collects the dotted names of the
keys we do not implement, so that start-up lists them in one warning instead of either
refusing the file or dropping them silently. Our own keys may be mixed into an official
file (``network.ledgerAddress``, ``server``, ``tee`` ...): they pass through unchanged
and are validated strictly like any file of ours.

Only formats carry over from the official broker; this module is written for zgserve.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zgserve.common import money
from zgserve.common.errors import ConfigError

logger = logging.getLogger(__name__)

# Top-level keys only the official layout has; any one of them marks a file as official.
OFFICIAL_TOP_LEVEL = frozenset(
    {
        "service", "interval", "contractAddress", "networks", "event", "gasPrice", "maxGasPrice",
        "revenueTransfer", "lora", "monitor", "zk", "zkProver", "chatCacheExpiration", "nvGPU",
        "logger", "logPaths", "controller", "cacheTokenBilling", "tieredPricing", "priceFeed",
        "whitelist", "async", "videoPoll", "providerHttp", "concurrencyLimit", "userUsageStats",
        "reconciliation", "allowTokenBilledSpeechToText", "allowOrigins",
    }
)  # fmt: skip
# Official keys inside sections whose name we share.
_OFFICIAL_NETWORK = frozenset({"url", "chainID", "privateKeys", "transactionLimit", "gasEstimationBuffer"})
_OFFICIAL_DATABASE = frozenset({"dsn", "provider"})
_OFFICIAL_SETTLEMENT = frozenset({"minSettlementFee"})
_SERVICE_TYPES = frozenset({"chatbot", "text-to-image", "image-editing", "speech-to-text"})
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class Translation:
    """Our settings' keys (camelCase, as in our YAML) and what the file says that we ignore."""

    data: dict[str, Any]
    official: bool
    unimplemented: list[str] = field(default_factory=list)

    def warning(self, source: str | Path | None = None) -> str:
        where = f" in {source}" if source else ""
        return f"official broker keys not implemented by zgserve{where} (ignored): " + ", ".join(
            self.unimplemented
        )


def is_official(data: dict[str, Any]) -> bool:
    """Whether ``data`` is written in the official layout (ours has none of its keys)."""
    if OFFICIAL_TOP_LEVEL & data.keys():
        return True
    return any(
        isinstance(data.get(section), dict) and keys & data[section].keys()
        for section, keys in (
            ("network", _OFFICIAL_NETWORK),
            ("database", _OFFICIAL_DATABASE),
            ("settlement", _OFFICIAL_SETTLEMENT),
        )
    )


def adopt(data: dict[str, Any], source: str | Path | None = None) -> dict[str, Any]:
    """``data`` as our keys; an official file is translated and its ignored keys logged once."""
    result = translate(data)
    if result.unimplemented:
        logger.warning(result.warning(source))
    return result.data


def translate(data: dict[str, Any]) -> Translation:
    """Map an official file onto our keys; a file of ours comes back unchanged."""
    if not is_official(data):
        return Translation(data=dict(data), official=False)
    return _Translator(data).run()


class _Translator:
    def __init__(self, source: dict[str, Any]) -> None:
        self.rest = {k: v for k, v in source.items()}
        self.out: dict[str, Any] = {}
        self.ignored: list[str] = []

    def run(self) -> Translation:
        service = self._section("service")
        tiers = self._tiers(self._section("tieredPricing"), "tieredPricing")
        cache = self._cache(self._section("cacheTokenBilling"), "cacheTokenBilling")
        self._network()
        self._database()
        self._intervals()
        self._settlement()
        self._limits()
        if "allowOrigins" in self.rest:
            self._sub("server")["allowOrigins"] = self.rest.pop("allowOrigins")
        if "contractAddress" in self.rest:
            self._sub("network")["inferenceAddress"] = self.rest.pop("contractAddress")
        self._service(service, tiers, cache)
        for key in sorted(OFFICIAL_TOP_LEVEL & self.rest.keys()):
            self._ignore(key, self.rest.pop(key))
        # What remains is ours (or unknown): BrokerSettings validates it strictly.
        for key, value in self.rest.items():
            if isinstance(value, dict) and isinstance(self.out.get(key), dict):
                self.out[key] = {**value, **self.out[key]}
            else:
                self.out.setdefault(key, value)
        return Translation(data=self.out, official=True, unimplemented=self.ignored)

    # --- helpers -------------------------------------------------------------------------

    def _section(self, key: str) -> dict[str, Any]:
        value = self.rest.pop(key, None)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)

    def _sub(self, key: str) -> dict[str, Any]:
        node = self.out.setdefault(key, {})
        assert isinstance(node, dict)
        return node

    def _ignore(self, name: str, value: Any) -> None:
        # One level of leaves below a section, so the warning names what the operator set.
        if isinstance(value, dict) and value and "." not in name and "[" not in name:
            self.ignored.extend(f"{name}.{k}" for k in value)
        else:
            self.ignored.append(name)

    def _ignore_rest(self, prefix: str, section: dict[str, Any]) -> None:
        self.ignored.extend(f"{prefix}.{k}" for k in section)

    # --- sections ------------------------------------------------------------------------

    def _network(self) -> None:
        net = self._section("network")
        legacy = self._section("networks")
        if legacy:
            # The pre-2026 layout: a map of one named network.
            if len(legacy) != 1 or not isinstance(next(iter(legacy.values())), dict):
                raise ConfigError("networks: zgserve serves one network; give exactly one entry")
            name, entry = next(iter(legacy.items()))
            self._network_keys(dict(entry), f"networks.{name}")
        self._network_keys(net, "network")

    def _network_keys(self, net: dict[str, Any], prefix: str) -> None:
        ours = self._sub("network")
        if "url" in net:
            ours["rpcUrl"] = net.pop("url")
        if "chainID" in net:
            ours["chainId"] = net.pop("chainID")
        if "privateKeys" in net:
            self.out["privateKeys"] = net.pop("privateKeys")
        official_left = {k: net.pop(k) for k in list(net) if k in _OFFICIAL_NETWORK}
        self._ignore_rest(prefix, official_left)
        ours.update(net)  # our own network keys (ledgerAddress, deployment ...)

    def _database(self) -> None:
        db = self._section("database")
        for key in ("dsn", "provider"):
            if key not in db:
                continue
            dsn = db.pop(key)
            if isinstance(dsn, str) and dsn.startswith(("postgres://", "postgresql://")):
                self._sub("database")["url"] = "postgresql+asyncpg://" + dsn.split("://", 1)[1]
            else:
                # A MySQL DSN: we store in SQLite or PostgreSQL; keep our default (or database.url).
                self.ignored.append(f"database.{key}")
        self._sub("database").update(db)

    def _intervals(self) -> None:
        interval = self._section("interval")
        settlement = self._sub("settlement")
        # Same meaning, our names: how often the loop looks, the oldest a fee may wait,
        # and the margin kept before a user's refund unlocks.
        for key, ours, as_int in (
            ("settlementProcessor", "intervalSeconds", False),
            ("forceSettlementProcessor", "maxAgeSeconds", True),
            ("autoSettleBufferTime", "refundMarginSeconds", True),
        ):
            if key in interval:
                seconds = parse_duration(interval.pop(key), f"interval.{key}")
                settlement[ours] = int(seconds) if as_int else seconds
        self._ignore_rest("interval", interval)

    def _settlement(self) -> None:
        section = self._section("settlement")
        if "minSettlementFee" in section:
            # Our engine weighs each user's fees against the gas they cost (minFeeGasMultiple).
            section.pop("minSettlementFee")
            self.ignored.append("settlement.minSettlementFee")
        self._sub("settlement").update(section)

    def _limits(self) -> None:
        limits = self._section("concurrencyLimit")
        ours = self._sub("limits")
        # Same names and meaning; our keys are camelCase like theirs, 0 turns a limit off.
        for key in (
            "maxGlobalConcurrent",
            "maxPerUserConcurrent",
            "perUserRPM",
            "perUserBurst",
            "perUserTPM",
            "perUserTPMBurst",
        ):
            if key in limits:
                ours[key] = limits.pop(key)
        # Images per minute (no image service here) and per-address overrides are not implemented.
        self._ignore_rest("concurrencyLimit", {k: v for k, v in limits.items() if v})
        whitelist = self._section("whitelist")
        addresses = whitelist.pop("userAddresses", None) or []
        if whitelist.pop("enabled", False) and addresses:
            ours["whitelist"] = list(addresses)
        self._ignore_rest("whitelist", whitelist)
        if not ours:
            del self.out["limits"]

    def _service(self, service: dict[str, Any], tiers: list[dict[str, Any]] | None, cache: Any) -> None:
        svc = dict(service)
        for key, ours in (("servingUrl", "servingUrl"), ("targetUrl", "targetUrl"), ("model", "model")):
            if key in svc:
                self.out[ours] = svc.pop(key)
        for key in ("inputPrice", "outputPrice"):
            if key in svc:
                self.out[key] = _price(svc.pop(key), f"service.{key}")
        denomination = svc.pop("priceDenomination", "NATIVE")
        if str(denomination).upper() != "NATIVE":
            raise ConfigError(
                f"service.priceDenomination: {denomination!r} is not supported; zgserve bills in neuron "
                "(give inputPrice/outputPrice)"
            )
        registration = self._sub("registration")
        if "type" in svc:
            kind = svc.pop("type")
            if kind not in _SERVICE_TYPES:
                raise ConfigError(
                    f"service.type: {kind!r} is not supported ({', '.join(sorted(_SERVICE_TYPES))})"
                )
            registration["serviceType"] = kind
        for key, ours in (
            ("verifiability", "verifiability"),
            ("targetTeeAddress", "teeAddress"),
        ):
            if key in svc:
                registration[ours] = svc.pop(key)
        if "providerStake" in svc:
            registration["stake"] = _price(svc.pop("providerStake"), "service.providerStake")
        if "additionalSecret" in svc:
            self._sub("upstream")["headers"] = svc.pop("additionalSecret") or {}
        enforce_cap = bool(svc.pop("enforceMaxCompletionTokens", False))
        shared_info = svc.pop("modelInfo", None)
        pricing = svc.pop("modelPricing", None)
        single: dict[str, Any] = {
            k: svc.pop(k) for k in ("upstreamModel", "modelAliases", "canonicalId") if k in svc
        }
        self._ignore_rest("service", svc)
        if pricing:
            if not isinstance(pricing, list):
                raise ConfigError("service.modelPricing: expected a list")
            models = [
                self._model_entry(dict(e), i, tiers, cache, shared_info, enforce_cap)
                for i, e in enumerate(pricing)
            ]
            self.out["models"] = models
            # As the official broker registers: the highest prices on-chain, a concrete model id.
            self.out.setdefault("inputPrice", max(m["inputPrice"] for m in models))
            self.out.setdefault("outputPrice", max(m["outputPrice"] for m in models))
            named = [m["id"] for m in models if m["id"] != "*"]
            self.out.setdefault("model", named[0] if named else "*")
        elif single or tiers or cache or shared_info:
            if "model" not in self.out or "inputPrice" not in self.out or "outputPrice" not in self.out:
                return  # BrokerSettings names what is missing
            entry: dict[str, Any] = {
                "model": self.out["model"],
                "inputPrice": self.out["inputPrice"],
                "outputPrice": self.out["outputPrice"],
                **single,
            }
            self.out["models"] = [self._model_entry(entry, None, tiers, cache, shared_info, enforce_cap)]

    def _model_entry(
        self,
        entry: dict[str, Any],
        index: int | None,
        tiers: list[dict[str, Any]] | None,
        cache: Any,
        shared_info: Any,
        enforce_cap: bool,
    ) -> dict[str, Any]:
        where = "service" if index is None else f"service.modelPricing[{index}]"
        if "model" not in entry:
            raise ConfigError(f"{where}.model: required key is missing")
        model: dict[str, Any] = {"id": entry.pop("model")}
        for key in ("inputPrice", "outputPrice"):
            if key not in entry:
                raise ConfigError(f"{where}.{key}: required key is missing (prices are in neuron)")
            model[key] = _price(entry.pop(key), f"{where}.{key}")
        for key, ours in (
            ("upstreamModel", "upstreamModel"),
            ("modelAliases", "aliases"),
            ("canonicalId", "canonicalId"),
            ("type", "type"),
        ):
            if entry.get(key):
                model[ours] = entry.pop(key)
            entry.pop(key, None)
        own_tiers = (
            self._tiers({"enabled": True, "tiers": entry.pop("tiers")}, f"{where}.tiers")
            if (entry.get("tiers"))
            else None
        )
        entry.pop("tiers", None)
        if own_tiers or tiers:
            model["tieredPricing"] = own_tiers or tiers
        own_cache = (
            self._cache(dict(entry.pop("cacheTokenBilling")), f"{where}.cacheTokenBilling")
            if isinstance(entry.get("cacheTokenBilling"), dict)
            else None
        )
        entry.pop("cacheTokenBilling", None)
        if own_cache or cache:
            model["cacheTokenBilling"] = own_cache or cache
        billing = entry.pop("billing", None)
        if isinstance(billing, dict):
            # per_image: the official float multipliers, kept as the decimals they were written as.
            multipliers = billing.get("resolutionMultipliers") or {}
            if isinstance(multipliers, dict) and multipliers:
                model["sizeMultipliers"] = {str(k): str(v) for k, v in multipliers.items()}
        info = entry.pop("modelInfo", None) or shared_info
        if isinstance(info, dict):
            model["modelInfo"] = info
            if isinstance(info.get("contextLength"), int) and info["contextLength"] > 0:
                model["contextLength"] = info["contextLength"]
            # Officially the advertised maximum binds only with enforceMaxCompletionTokens.
            if enforce_cap and isinstance(info.get("maxCompletionTokens"), int):
                model["maxOutputTokens"] = info["maxCompletionTokens"]
        for key in entry:
            self.ignored.append(f"{where}.{key}")
        return model

    def _tiers(self, section: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
        enabled = section.pop("enabled", False)
        raw = section.pop("tiers", None)
        self._ignore_rest(where, section)
        if not enabled or not raw:
            return None
        if not isinstance(raw, list):
            raise ConfigError(f"{where}.tiers: expected a list")
        known = {
            "maxInputTokens",
            "inputMultiplier",
            "inputMultiplierDenominator",
            "outputMultiplier",
            "outputMultiplierDenominator",
        }
        out = []
        for i, tier in enumerate(raw):
            if not isinstance(tier, dict):
                raise ConfigError(f"{where}.tiers[{i}]: expected a mapping")
            # Officially a zero or missing denominator means 1 (an integer multiple).
            clean = {
                k: v for k, v in tier.items() if k in known and not (k.endswith("Denominator") and not v)
            }
            self.ignored.extend(f"{where}.tiers[{i}].{k}" for k in tier if k not in known)
            out.append(clean)
        return out

    def _cache(self, section: dict[str, Any], where: str) -> dict[str, Any] | None:
        enabled = section.pop("enabled", False)
        divisor = section.pop("divisor", None)
        # Cache-write premiums: we bill cache writes at the input price.
        written = {k: v for k, v in section.items() if v}
        self._ignore_rest(where, written)
        if not enabled:
            return None
        return {"divisor": divisor}


def _price(value: Any, where: str) -> int:
    if isinstance(value, float):
        raise ConfigError(f"{where}: amounts are integers in neuron (or decimal strings), not floats")
    try:
        return money.parse(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_duration(value: Any, where: str) -> float:
    """A Go duration (``"90s"``, ``"10m"``, ``"1h30m"``) or legacy integer seconds → seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if text.isdigit():
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"{where}: {value!r} is not a duration (e.g. 60s, 10m, 1h)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
