"""Settings: environment variables with the URBIS_ prefix, passed into create_app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from urbis.twin.outbound import OutboundGuard


class Settings(BaseSettings):
    """Every limit on input is a setting; none is read at import time."""

    model_config = SettingsConfigDict(env_prefix="URBIS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path | None = Field(
        default=None, description="On-disk store directory; None keeps the twin in memory."
    )
    open: bool = Field(default=False, description="Anonymous full access (development only).")
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token required for writes (a secret: never shown)."
    )
    demo: bool = False
    demo_live_seconds: float = Field(default=5.0, description="Demo update period; 0 disables.")
    demo_mqtt_url: str | None = Field(
        default=None,
        pattern=r"^(mqtt|tcp)://[A-Za-z0-9.\-\[\]:]+?(:\d{1,5})?/?$",
        description="mqtt://host:port: the demo's sensors publish there and come back through "
        "an mqtt source (docs/connectors-live.md); unset: updates are applied directly.",
    )

    service_area: str | None = Field(
        default=None,
        description="min lon,min lat,max lon,max lat: refuse points whose swap falls inside.",
    )

    max_body_bytes: int = 8 * 1024 * 1024
    max_json_depth: int = 64
    max_batch_size: int = 5000
    max_page_size: int = 1000
    max_offset: int = Field(
        default=1_000_000, ge=0, description="Largest offset of a query: deeper pages are a 400."
    )
    default_page_size: int = 20
    max_q_length: int = 4096
    max_query_terms: int = Field(
        default=100,
        ge=1,
        description="Terms of q, type or scopeQ, and EntitySelectors, in one query; more is a "
        "TooComplexQuery (the store's planning cost grows faster than the terms).",
    )
    max_query_depth: int = Field(
        default=32, ge=1, description="Nesting of brackets in q, type or scopeQ."
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=4096,
        description="Request line and headers together; larger requests are refused (h11).",
    )
    http_parser: Literal["h11", "httptools"] = Field(
        default="h11",
        description="h11 enforces max_header_bytes; httptools is faster but has no header "
        "limit: use it only behind a proxy that limits headers.",
    )
    max_scan: int = 200_000

    context_fetch_timeout: float = 5.0
    max_context_bytes: int = 1_000_000
    context_cache_ttl: float = 3600.0
    allow_remote_contexts: bool = True

    # -- outbound fetches: contexts, notifications, federation, connectors (twin/outbound.py)
    outbound_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Destinations fetched even though private: hosts, host:port, CIDRs or "
        "http(s) URL prefixes, comma-separated. Public addresses are always allowed; loopback "
        "too with --open.",
    )

    # -- store backend (twin/store) --------------------------------------------------------
    store: str = Field(
        default="oxigraph",
        description="The store backend by name (twin/store/registry.py): oxigraph (embedded), "
        "sparql (a remote SPARQL 1.1 engine), or a plugin's (entry point group urbis.stores).",
    )
    sparql_url: str | None = Field(
        default=None, description="Remote engine's query endpoint (URBIS_STORE=sparql)."
    )
    sparql_update_url: str | None = Field(
        default=None, description="Remote update endpoint; default: the query URL."
    )
    sparql_store_url: str | None = Field(
        default=None, description="Remote Graph Store Protocol endpoint, if it has one."
    )
    sparql_user: str | None = None
    sparql_password: SecretStr | None = None

    # -- SPARQL endpoint (/sparql) ---------------------------------------------------------
    sparql_timeout: float = Field(default=30.0, description="Seconds before a query is stopped.")
    sparql_max_rows: int = Field(default=1_000_000, description="Rows or triples per result.")
    sparql_max_query_length: int = Field(default=100_000, description="Characters per query.")
    sparql_service_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Endpoints a federated SERVICE clause may call (admin callers only), "
        "comma-separated; empty: SERVICE is refused.",
    )

    # -- connectors (connectors/) ----------------------------------------------------------
    sources_dir: Path | None = Field(
        default=None,
        description="A directory of source definitions (<id>.toml) to use instead of the "
        "state store (<data dir>/state.sqlite3).",
    )
    sources_scheduler: bool = Field(
        default=True, description="Run the sources' scheduled syncs in the background."
    )

    # -- subscriptions (ngsild/subscriptions.py) --------------------------------------------
    notification_timeout: float = Field(
        default=5.0, description="Seconds a notification endpoint may take to answer."
    )
    notification_queue_size: int = Field(
        default=10_000, description="Committed writes waiting to be matched; beyond: dropped."
    )

    # -- federation: context source registrations, distributed queries (docs/federation.md) --
    federation_timeout: float = Field(
        default=5.0, gt=0, description="Seconds a context source has to answer a forwarded query."
    )
    federation_alias: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        description="This broker's name in Via headers; default: generated, kept in the data dir.",
    )
    federation_max_window: int = Field(
        default=1000, ge=1, description="Most entities (offset + limit) a distributed query sees."
    )

    @field_validator("outbound_allow", "sparql_service_allow", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")
        self.area()  # refuse a malformed service area at start
        OutboundGuard(self.outbound_allow)  # and a malformed allow-list entry
        if self.store == "sparql" and not self.sparql_url:
            raise ValueError("URBIS_STORE=sparql needs URBIS_SPARQL_URL")
        return self

    def area(self) -> tuple[float, float, float, float] | None:
        if self.service_area is None:
            return None
        try:
            west, south, east, north = (float(x) for x in self.service_area.split(","))
        except ValueError:
            raise ValueError("service_area must be 'min lon,min lat,max lon,max lat'") from None
        if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
            raise ValueError("service_area must be a lon/lat box with min < max")
        return west, south, east, north
