"""Source definitions: one TOML file per source, validated with a precise error per mistake.

This is the minimal shape the connectors build on; the framework work extends it (mapping,
units, schedule, ...). Kind-specific settings go in `options`, which each connector validates.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AttributeMapping(BaseModel):
    """source field -> NGSI-LD attribute."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="field name in the source record")
    attribute: str = Field(description="NGSI-LD attribute name (a term of the context)")
    type: str = Field(default="Property", description="Property or Relationship")
    convert: str | None = Field(default=None, description="int, float, bool, str, datetime")
    unit: str | None = Field(default=None, description="UN/CEFACT unit code of the value")


class SourceDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")
    kind: str
    endpoint: str | None = None  # URL, or a file path for file sources
    credentials: str | None = Field(
        default=None, description="name of an environment variable holding the secret"
    )
    entity_type: str | None = Field(default=None, description="target Smart Data Models type")
    id_template: str | None = Field(default=None, description="e.g. urn:ngsi-ld:Streetlight:{key}")
    crs: str | None = Field(default=None, description="source CRS when the data does not say")
    mapping: list[AttributeMapping] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict, description="kind-specific settings")
    schedule: str | None = None
    licence: str | None = None
    publisher: str | None = None
    title: str | None = None
