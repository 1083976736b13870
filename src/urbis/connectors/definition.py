"""Source definitions: one TOML file per source, validated with a precise error per mistake.

Kind-specific settings go in `options`, which each connector validates (a connector may declare
an `options_model` that the framework checks at load time). `DefinitionError` names the file,
the field path (`mapping[2].unit`) and what to fix for every mistake at once.
"""

from __future__ import annotations

import re
import string
import tomllib
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from urbis.connectors.errors import ConnectorError
from urbis.connectors.units import unit_code
from urbis.twin.errors import ERROR_BASE

ATTRIBUTE_KINDS = ("Property", "Relationship", "GeoProperty", "JsonProperty")
CONVERSIONS = ("int", "float", "bool", "str", "datetime", "date", "json")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_SCHEDULE = re.compile(r"^(?:every\s+)?(\d+)\s*(s|m|h|d)$")
_NAMED_SCHEDULES = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}
MIN_SCHEDULE_SECONDS = 10


def template_fields(template: str) -> list[str]:
    """The `{field}` names of a str.format template; ValueError when it is malformed."""
    names: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name or not re.match(r"^[^\W\d][\w\-]*$", name) or spec or conversion:
            raise ValueError(
                f"placeholder {{{name}}} is not a plain field name: write e.g. "
                "urn:ngsi-ld:Streetlight:{key} (no format specs, indexes or attributes)"
            )
        names.append(name)
    return names


def schedule_seconds(schedule: str) -> int:
    """Seconds between runs of a schedule such as 'every 15m', '2h', 'daily'."""
    text = schedule.strip().lower()
    if text in _NAMED_SCHEDULES:
        return _NAMED_SCHEDULES[text]
    match = _SCHEDULE.match(text)
    if match is None:
        raise ValueError(
            f"schedule {schedule!r} is not understood: write 'every <n><s|m|h|d>' "
            "(e.g. 'every 15m'), 'hourly', 'daily' or 'weekly'"
        )
    seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if seconds < MIN_SCHEDULE_SECONDS:
        raise ValueError(f"schedule {schedule!r} is shorter than {MIN_SCHEDULE_SECONDS} s")
    return seconds


class AttributeMapping(BaseModel):
    """source field -> NGSI-LD attribute."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="field name in the source record")
    attribute: str = Field(description="NGSI-LD attribute name (a term of the context)")
    type: str = Field(default="Property", description="Property or Relationship")
    convert: str | None = Field(
        default=None, description="int, float, bool, str, datetime, date, json"
    )
    unit: str | None = Field(default=None, description="UN/CEFACT unit code of the value")
    # -- added by the framework (all optional) ---------------------------------------------
    template: str | None = Field(
        default=None,
        description="Relationship target built from the value, e.g. urn:ngsi-ld:Group:{value}",
    )
    dataset_id: str | None = Field(default=None, description="datasetId of the instance")

    @field_validator("attribute")
    @classmethod
    def _attribute_name(cls, value: str) -> str:
        if not value or re.search(r"[\s<>\"'=;()]", value) or value in ("id", "type"):
            raise ValueError(
                f"{value!r} cannot be an attribute name (no spaces, <>\"'=;(), id or type)"
            )
        return value

    @field_validator("type")
    @classmethod
    def _attribute_kind(cls, value: str) -> str:
        if value not in ATTRIBUTE_KINDS:
            raise ValueError(f"must be one of {', '.join(ATTRIBUTE_KINDS)}, not {value!r}")
        return value

    @field_validator("convert")
    @classmethod
    def _conversion(cls, value: str | None) -> str | None:
        if value is not None and value not in CONVERSIONS:
            raise ValueError(f"must be one of {', '.join(CONVERSIONS)}, not {value!r}")
        return value

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: str | None) -> str | None:
        return None if value is None else unit_code(value)

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None and template_fields(value) != ["value"]:
            raise ValueError("a Relationship template needs exactly one {value} placeholder")
        return value

    @model_validator(mode="after")
    def _relationship_needs_uri(self) -> AttributeMapping:
        if self.template is not None and self.type != "Relationship":
            raise ValueError("template is only for type = 'Relationship'")
        if self.unit is not None and self.type != "Property":
            raise ValueError("unit is only for type = 'Property'")
        return self


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
    # -- added by the framework (all optional) ---------------------------------------------
    description: str | None = None
    context: str | None = Field(
        default=None,
        description="@context of the mapped terms: a hosted context id or a URL; None: core",
    )
    key: str | None = Field(
        default=None, description="source field that identifies a record (feeds {key})"
    )
    observed_at: str | None = Field(
        default=None, description="source field with the observation time (-> observedAt)"
    )
    timezone: str = Field(default="UTC", description="zone of timestamps without an offset")
    tenant: str = Field(default="", description="NGSI-LD tenant the entities go to")
    geometry_attribute: str = Field(default="location", description="GeoProperty of geometries")
    retries: int = Field(default=3, ge=0, le=10, description="fetch attempts after the first")
    backoff: float = Field(default=1.0, ge=0, le=300, description="first retry delay, seconds")
    batch_size: int = Field(default=1000, ge=1, le=5000, description="entities per transaction")

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if not re.match(r"^[a-z][a-z0-9_\-]{0,31}$", value):
            raise ValueError("a kind is a short lower-case name such as 'file' or 'wfs'")
        return value

    @field_validator("credentials")
    @classmethod
    def _credentials(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(
                "credentials names an environment variable (e.g. 'WFS_TOKEN') that holds the "
                "secret; never put the secret itself in a source definition"
            )
        return value

    @field_validator("id_template")
    @classmethod
    def _id_template(cls, value: str | None) -> str | None:
        if value is None:
            return value
        fields = template_fields(value)
        if not fields:
            raise ValueError("id_template needs a placeholder such as {key}, or every id collides")
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", value):
            raise ValueError("id_template must produce a URI, e.g. urn:ngsi-ld:Streetlight:{key}")
        return value

    @field_validator("crs")
    @classmethod
    def _crs(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            CRS.from_user_input(value)
        except CRSError as exc:
            raise ValueError(f"unknown CRS {value!r} (write e.g. 'EPSG:2154'): {exc}") from None
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() not in ("", "manual"):
            schedule_seconds(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (write e.g. 'Europe/Paris')") from None
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        if value and not re.match(r"^[A-Za-z0-9_\-]{1,64}$", value):
            raise ValueError("a tenant is letters, digits, '_' or '-' (at most 64)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SourceDefinition:
        seen: dict[tuple[str, str | None], int] = {}
        for i, item in enumerate(self.mapping):
            slot = (item.attribute, item.dataset_id)
            if slot in seen:
                raise ValueError(
                    f"mapping[{i}] writes attribute {item.attribute!r} already written by "
                    f"mapping[{seen[slot]}] (give one of them a dataset_id)"
                )
            seen[slot] = i
        if self.mapping and self.entity_type is None:
            raise ValueError("a mapping needs entity_type (the type of the entities it builds)")
        return self

    def interval(self) -> int | None:
        """Seconds between scheduled runs; None when the source is synced only on demand."""
        if self.schedule is None or self.schedule.strip().lower() in ("", "manual"):
            return None
        return schedule_seconds(self.schedule)

    @property
    def graph(self) -> str:
        """The source's own named graph: urn:urbis:dataset:<id>."""
        from urbis.twin.rdf import dataset_graph

        return dataset_graph(self.id)


# -- loading with precise errors ------------------------------------------------------------


class DefinitionError(ConnectorError, ValueError):
    """Every mistake of one definition: (field path, message) pairs, and where it came from.

    Rendered as a 400 whose `errors` lists {field, message} and whose `detail` says the first;
    `where` (a file of the server) is only in `str()`, for the command line and the log."""

    type_base = ERROR_BASE
    error_type, status, title = "BadRequestData", 400, "Bad request data"

    def __init__(self, where: str, problems: list[tuple[str, str]]) -> None:
        self.where = where
        self.problems = problems
        first = problems[0] if problems else ("", "invalid definition")
        detail = f"{first[0]}: {first[1]}" if first[0] else first[1]
        if len(problems) > 1:
            detail += f" (and {len(problems) - 1} more in 'errors')"
        super().__init__(
            detail, errors=[{"field": path, "message": message} for path, message in problems]
        )

    def __str__(self) -> str:
        return "\n".join(
            f"{self.where}: {path}: {message}" if path else f"{self.where}: {message}"
            for path, message in self.problems
        )


def field_path(loc: tuple[int | str, ...]) -> str:
    """('mapping', 2, 'unit') -> 'mapping[2].unit'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (a typo? kind-specific settings go in [options])"
        elif item["type"] == "string_pattern_mismatch" and item["loc"] == ("id",):
            message = "an id is 1-64 lower-case letters, digits, '_' or '-', starting alnum"
        problems.append((field_path(item["loc"]), message))
    return problems


def parse_definition(data: object, where: str = "<definition>") -> SourceDefinition:
    """Validate a parsed definition (a TOML table or a JSON object)."""
    if not isinstance(data, dict):
        raise DefinitionError(where, [("", "a source definition is a table / JSON object")])
    try:
        return SourceDefinition.model_validate(data)
    except ValidationError as error:
        raise DefinitionError(where, _problems(error)) from None


def read_definition(path: Path) -> SourceDefinition:
    """Read and validate one TOML definition file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError(str(path), [("", f"not valid TOML: {exc}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(str(path), [("", f"cannot read the file: {exc}")]) from None
    return parse_definition(data, str(path))


# -- writing (tomllib reads only; definitions are flat enough for a small writer) -----------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        import json

        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if re.match(r"^[A-Za-z0-9_\-]+$", key) else _toml_value(key)


def to_toml(source: SourceDefinition) -> str:
    """The definition as TOML, defaults left out, so the file stays what a person would write."""
    data = source.model_dump(exclude_defaults=True, exclude_none=True)
    mapping = data.pop("mapping", [])
    options = data.pop("options", {})
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items()]
    if options:
        lines += ["", "[options]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in options.items()]
    for item in mapping:
        lines += ["", "[[mapping]]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"
