"""Files connector (kind "file"): GeoJSON, CSV and (zipped) Shapefiles from a local path.

Records are streamed: a GeoJSON FeatureCollection is decoded one feature at a time, CSV row by
row and Shapefiles record by record, so a 30,000-feature file never sits in memory twice.
A file whose size, mtime and sha256 have not changed since the last good run is not read again
(the run yields nothing and removes nothing).

NGSI-LD GeoJSON (ETSI GS CIM 009 clause 4.5.16: features whose `id` is the entity id and whose
`properties` hold the entity's `type` and attributes) passes through as NGSI-LD entities when
the definition has no `entity_type`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import shapefile
from pydantic import BaseModel, ConfigDict, Field

from urbis.connectors.base import Connector, Cursor, Feature, NgsiEntity, Record, SourceUnavailable
from urbis.connectors.harmonize import crs_from_geojson, crs_from_prj

_CHUNK = 1 << 20
_DECODER = json.JSONDecoder()
_SKIP = re.compile(r"\s*")
_SKIP_COMMA = re.compile(r"[\s,]*")
# dBase language driver ids -> Python codecs (the common ones; 0x57 is "ANSI", i.e. cp1252)
_LDID = {
    0x01: "cp437",
    0x02: "cp850",
    0x03: "cp1252",
    0x57: "cp1252",
    0x58: "cp1252",
    0x59: "cp1252",
    0x64: "cp852",
    0x65: "cp866",
    0x7D: "cp1255",
    0x7E: "cp1256",
    0xC8: "cp1250",
    0xC9: "cp1251",
    0xCA: "cp1254",
    0xCB: "cp1253",
}
_LAT_NAMES = ("lat", "latitude", "y", "lat_wgs84")
_LON_NAMES = ("lon", "lng", "long", "longitude", "x", "lon_wgs84")
_WKT_NAMES = ("wkt", "geometry", "geom", "the_geom")


class FileOptions(BaseModel):
    """[options] of a file source."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["geojson", "csv", "shapefile"] | None = Field(
        default=None, description="default: from the file extension"
    )
    encoding: str | None = Field(default=None, description="text/DBF encoding; default: sniffed")
    delimiter: str | None = Field(default=None, max_length=1, description="CSV; default: sniffed")
    lat: str | None = Field(default=None, description="CSV latitude (or y) column")
    lon: str | None = Field(default=None, description="CSV longitude (or x) column")
    wkt: str | None = Field(default=None, description="CSV column holding WKT geometries")
    layer: str | None = Field(default=None, description="Shapefile name inside a zip")
    always_read: bool = Field(default=False, description="read even when the file is unchanged")


def fingerprint(path: Path) -> dict[str, Any]:
    """size, mtime and sha256 of a file: the cursor of a file source."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    stat = path.stat()
    return {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": digest.hexdigest()}


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        return "geojson"
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    if suffix in (".zip", ".shp"):
        return "shapefile"
    raise ValueError(f"cannot tell the format of {path.name}: set options.format")


class FileConnector(Connector):
    """A local GeoJSON, CSV or Shapefile (zipped or not) whose path is the `endpoint`."""

    kind = "file"
    options_model = FileOptions

    @property
    def options(self) -> FileOptions:
        return FileOptions.model_validate(self.source.options)

    @property
    def path(self) -> Path:
        if not self.source.endpoint:
            raise SourceUnavailable(f"source {self.source.id}: no endpoint (the file's path)")
        return Path(self.source.endpoint).expanduser()

    def fetch(self, cursor: Cursor) -> Iterator[Record]:
        path = self.path
        if not path.is_file():
            raise SourceUnavailable(f"{path}: no such file")
        options = self.options
        try:
            stamp = fingerprint(path)
        except OSError as exc:
            raise SourceUnavailable(f"{path}: {exc}") from exc
        if not options.always_read and cursor.state.get("file") == stamp:
            cursor.full = False  # nothing changed: nothing to write, nothing to remove
            return
        cursor.state["file"] = stamp
        cursor.full = True
        kind = options.format or detect_format(path)
        if kind == "geojson":
            yield from self._geojson(path, options)
        elif kind == "csv":
            yield from self._csv(path, options)
        else:
            yield from self._shapefile(path, options)

    # -- GeoJSON --------------------------------------------------------------------------

    def _geojson(self, path: Path, options: FileOptions) -> Iterator[Record]:
        crs: str | None = None
        with path.open(encoding=options.encoding or "utf-8-sig") as f:
            for kind, value in iter_geojson(f):
                if kind == "crs":
                    crs = crs_from_geojson(value)
                else:
                    yield self._feature(value, crs, kind)

    def _feature(self, item: Any, crs: str | None, index: str) -> Record:
        if not isinstance(item, dict):
            return Feature(key=index, properties={"value": item})
        props = item.get("properties") or {}
        geometry = item.get("geometry")
        ident = item.get("id")
        if (
            self.source.entity_type is None
            and isinstance(ident, str)
            and ":" in ident
            and isinstance(props, dict)
            and "type" in props
        ):
            entity = {"id": ident, **props}
            if geometry is not None and self.source.geometry_attribute not in entity:
                entity[self.source.geometry_attribute] = {"type": "GeoProperty", "value": geometry}
            return NgsiEntity(entity=entity, context=item.get("@context"))
        key = str(ident) if ident is not None else index
        return Feature(
            key=key,
            properties=props if isinstance(props, dict) else {"properties": props},
            geometry=geometry if isinstance(geometry, dict) else None,
            crs=crs,
        )

    # -- CSV ------------------------------------------------------------------------------

    def _csv(self, path: Path, options: FileOptions) -> Iterator[Record]:
        encoding = options.encoding or _sniff_encoding(path)
        with path.open(encoding=encoding, newline="") as f:
            sample = f.read(64 * 1024)
            f.seek(0)
            delimiter = options.delimiter or _sniff_delimiter(sample)
            reader = csv.DictReader(f, delimiter=delimiter)
            columns = reader.fieldnames or []
            lat = options.lat or _find(columns, _LAT_NAMES)
            lon = options.lon or _find(columns, _LON_NAMES)
            wkt = options.wkt or (None if lat and lon else _find(columns, _WKT_NAMES))
            for number, row in enumerate(reader, start=1):
                props: dict[str, Any] = {k: v for k, v in row.items() if k is not None}
                problem = _row_problem(row, columns, lat, lon)
                if problem is not None:
                    raw = {**props, "extra": row.get(None)} if None in row else props  # type: ignore[call-overload]
                    yield Feature(key=str(number), properties=raw, problem=problem)
                    continue
                geometry: dict[str, Any] | None = None
                if wkt and props.get(wkt):
                    geometry = _wkt_geometry(props.pop(wkt))
                elif lat and lon and props.get(lat) and props.get(lon):
                    geometry = {
                        "type": "Point",
                        "coordinates": [_number(props.pop(lon)), _number(props.pop(lat))],
                    }
                yield Feature(key=str(number), properties=props, geometry=geometry)

    # -- Shapefiles -----------------------------------------------------------------------

    def _shapefile(self, path: Path, options: FileOptions) -> Iterator[Record]:
        try:
            opened = _open_shapefile(path, options)
        except (OSError, zipfile.BadZipFile, shapefile.ShapefileException) as exc:
            raise SourceUnavailable(f"{path}: cannot open the Shapefile: {exc}") from exc
        reader, crs = opened
        with reader:
            fields = [f.name for f in reader.fields[1:]]
            for index, shape_record in enumerate(reader.iterShapeRecords()):
                values = dict(zip(fields, shape_record.record, strict=False))
                shape = shape_record.shape
                geometry = None
                if shape.shapeType != shapefile.NULL:
                    geometry = shape.__geo_interface__
                    if geometry.get("type") == "Point":  # plain lists: cheaper downstream
                        geometry = {"type": "Point", "coordinates": list(shape.points[0])}
                yield Feature(key=str(index + 1), properties=values, geometry=geometry, crs=crs)


def _open_shapefile(path: Path, options: FileOptions) -> tuple[shapefile.Reader, str | None]:
    """A pyshp Reader with the right DBF encoding, and the CRS from the `.prj`."""
    if path.suffix.lower() == ".zip":
        # The members are read into memory once (bytes, not features): 2.6 MB for the 29,969
        # street lights of Montpellier.
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            shp = _pick_layer([n for n in names if n.lower().endswith(".shp")], options.layer)
            stem = shp[: -len(".shp")]
            sibling = {
                PurePosixPath(n).suffix.lower(): n
                for n in names
                if n[: -len(PurePosixPath(n).suffix) or None] == stem
            }
            parts = {
                s: io.BytesIO(archive.read(sibling[s]))
                for s in (".shp", ".shx", ".dbf")
                if s in sibling
            }
            prj = archive.read(sibling[".prj"]).decode("latin-1") if ".prj" in sibling else None
            cpg = (
                archive.read(sibling[".cpg"]).decode("ascii", "replace")
                if ".cpg" in sibling
                else None
            )
        dbf = parts[".dbf"].getvalue() if ".dbf" in parts else b""
        encoding = options.encoding or _dbf_encoding(cpg, dbf)
        reader = shapefile.Reader(
            shp=parts[".shp"], shx=parts.get(".shx"), dbf=parts.get(".dbf"), encoding=encoding
        )
    else:
        base = path.with_suffix("")
        prj_path, cpg_path, dbf_path = (base.with_suffix(s) for s in (".prj", ".cpg", ".dbf"))
        prj = prj_path.read_text(encoding="latin-1") if prj_path.exists() else None
        cpg = cpg_path.read_text(encoding="ascii", errors="replace") if cpg_path.exists() else None
        dbf = dbf_path.read_bytes() if dbf_path.exists() else b""
        encoding = options.encoding or _dbf_encoding(cpg, dbf)
        reader = shapefile.Reader(str(path), encoding=encoding)
    crs = crs_from_prj(prj) if prj and prj.strip() else None
    return reader, crs


def _pick_layer(shps: list[str], layer: str | None) -> str:
    if not shps:
        raise shapefile.ShapefileException("the zip holds no .shp file")
    if layer is not None:
        for name in shps:
            if PurePosixPath(name).stem == layer:
                return name
        raise shapefile.ShapefileException(f"no layer {layer!r} in the zip ({shps})")
    if len(shps) > 1:
        raise shapefile.ShapefileException(
            f"the zip holds several Shapefiles {shps}: set options.layer"
        )
    return shps[0]


def _dbf_encoding(cpg: str | None, dbf: bytes) -> str:
    """The DBF text encoding: the `.cpg`, else the language driver id, else UTF-8 if the
    records decode as UTF-8, else cp1252 (what Windows GIS tools write)."""
    if cpg and cpg.strip():
        text = cpg.strip().lower()
        return {"ansi 1252": "cp1252", "1252": "cp1252"}.get(text, text)
    if len(dbf) > 29 and dbf[29] in _LDID:
        return _LDID[dbf[29]]
    try:
        dbf.decode("utf-8")
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


def _sniff_encoding(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(64 * 1024)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the sample's end
            return "cp1252"
    return "utf-8-sig"


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _find(columns: Sequence[str], names: tuple[str, ...]) -> str | None:
    lowered = {c.strip().lower(): c for c in columns}
    return next((lowered[n] for n in names if n in lowered), None)


def _number(text: Any) -> Any:
    if isinstance(text, str):
        cleaned = text.strip().replace(",", ".") if "." not in text else text.strip()
        try:
            return float(cleaned)
        except ValueError:
            return text
    return text


def _wkt_geometry(text: str) -> dict[str, Any]:
    import shapely

    try:
        loaded: dict[str, Any] = json.loads(shapely.to_geojson(shapely.from_wkt(text)))
    except Exception:
        return {"type": "Invalid", "wkt": text}  # the harmoniser quarantines it with a reason
    return loaded


# -- streaming GeoJSON --------------------------------------------------------------------------


def iter_geojson(f: io.TextIOBase | Any) -> Iterator[tuple[str, Any]]:
    """Yield ("crs", member) and (index, feature) pairs from a GeoJSON text stream.

    Handles a FeatureCollection (its `features` array decoded one item at a time; other
    top-level members are small and decoded whole), a top-level array of features, and a
    single Feature. Reads 1 MiB at a time.
    """
    buffer = _Buffer(f)
    buffer.skip_ws()
    first = buffer.peek()
    if first == "[":
        buffer.take(1)
        yield from _array_items(buffer)
        return
    if first != "{":
        raise ValueError("not GeoJSON: the text starts with neither '{' nor '['")
    buffer.take(1)
    members: dict[str, Any] = {}
    while True:
        buffer.skip_ws(",")
        if buffer.peek() == "}":
            break
        name = buffer.decode()
        buffer.skip_ws()
        if buffer.take(1) != ":":
            raise ValueError("malformed GeoJSON object (expected ':')")
        buffer.skip_ws()
        if name == "features" and buffer.peek() == "[":
            buffer.take(1)
            yield from _array_items(buffer)
            continue
        value = buffer.decode()
        members[name] = value
        if name == "crs":
            yield "crs", value
    if members.get("type") == "Feature":
        yield "1", members


def _array_items(buffer: _Buffer) -> Iterator[tuple[str, Any]]:
    index = 0
    while True:
        buffer.skip_ws(",")
        if buffer.peek() == "]":
            buffer.take(1)
            return
        index += 1
        yield str(index), buffer.decode()


class _Buffer:
    """A sliding window over a text stream for `json.JSONDecoder.raw_decode`."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.text = ""
        self.pos = 0
        self.eof = False

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.text = self.text[self.pos :] + chunk
        self.pos = 0
        return True

    def skip_ws(self, extra: str = "") -> None:
        pattern = _SKIP_COMMA if extra else _SKIP
        while True:
            match = pattern.match(self.text, self.pos)
            self.pos = match.end() if match else self.pos
            if self.pos < len(self.text) or not self._more():
                return

    def peek(self) -> str:
        if self.pos >= len(self.text) and not self._more():
            raise ValueError("the GeoJSON text ends too early (truncated?)")
        return self.text[self.pos]

    def take(self, n: int) -> str:
        out = self.peek()
        self.pos += n
        return out

    def decode(self) -> Any:
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if not self._more():
                    raise ValueError("the GeoJSON text is truncated or malformed") from None
                continue
            at_end = end >= len(self.text) and not self.eof
            if at_end and self._incomplete_number(value) and self._more():
                continue
            self.pos = end
            if self.pos > _CHUNK:
                self.text = self.text[self.pos :]
                self.pos = 0
            return value

    @staticmethod
    def _incomplete_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)


def _row_problem(
    row: dict[str | None, Any], columns: Sequence[str], lat: str | None, lon: str | None
) -> str | None:
    """What makes a CSV row unreadable as it stands; the csv module would pass it silently."""
    if None in row:  # more values than header columns: a stray delimiter, e.g. "85,5"
        return f"the row has {len(columns) + len(row[None])} values, the header {len(columns)}"
    missing = [k for k, v in row.items() if v is None]
    if missing:
        return f"the row has {len(columns) - len(missing)} values, the header {len(columns)}"
    if lat and lon and bool(row.get(lat)) != bool(row.get(lon)):
        given, absent = (lat, lon) if row.get(lat) else (lon, lat)
        return f"{given!r} is given without {absent!r}"
    return None
