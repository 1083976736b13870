"""The NGSI-LD core @context (ETSI GS CIM 009), kept in the package so it is never fetched.

The term set is the union of the v1.8 and v1.9 core contexts. Where the two versions disagree,
v1.9 wins: v1.8 maps `attributeCount` and `attributeDetails` to themselves, which a JSON-LD
processor resolves against `@vocab` (the default context) - an erratum that v1.9 fixed by moving
them into the `ngsi-ld:` namespace. `ngsildproof` keeps only its `@id`: its scoped context
imports the W3C data-integrity context, which matters for proofs, not for term expansion.

The mapping is grouped by coercion so that a reader sees at a glance which core members are
date-times, IRIs, vocabulary values, JSON literals or lists.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Final

NGSI_LD: Final = "https://uri.etsi.org/ngsi-ld/"
GEOJSON: Final = "https://purl.org/geojson/vocab#"
DEFAULT_VOCAB: Final = "https://uri.etsi.org/ngsi-ld/default-context/"
DEFAULT_CORE_CONTEXT_URL: Final = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"

_CORE_URL = re.compile(
    r"^https?://uri\.etsi\.org/ngsi-ld/v1/ngsi-ld-core-context(-v\d+\.\d+(\.\d+)?)?\.jsonld$"
)


def is_core_context_url(url: str) -> bool:
    """True for every published core context URL (v1.3 ... v1.9 and the unversioned one)."""
    return bool(_CORE_URL.match(url))


def _words(text: str) -> list[str]:
    return text.split()


# Terms whose IRI is `ngsi-ld:<term>`.
_SAME_NAME = _words("""
    Attribute AttributeList ContextSourceIdentity ContextSourceNotification
    ContextSourceRegistration Date DateTime EntityMap EntityType EntityTypeInfo
    EntityTypeList ExecutionResultDetails GeoProperty JsonProperty LanguageProperty
    ListProperty ListRelationship Notification Property Relationship Snapshot
    SnapshotNotification Subscription TemporalProperty Time VocabProperty accept aggrMethods
    aggrParams aggrPeriodDuration attributeCount attributeDetails attrs cacheDuration
    collation contextSourceAlias contextSourceInfo contextSourceUptime cooldown csf data
    detail endpoint entities entity entityCount error errors expandValues format geoQ
    geoproperty georel idPattern information isActive join jsonKeys jsonldContext lang lastN
    linkedMaps localOnly location management managementInterval mode ngsildConformance
    ngsildproof notUpdated notification notificationTrigger notifierInfo observationInterval
    observationSpace omit operationSpace operations ordering pick q reason receiverInfo
    refreshRate registrationId registrationName resultStatus scope scopeQ showChanges
    snapshotId snapshotLifetime snapshotPriority snapshotStatus status subscriptionName
    sysAttrs temporalQ throttling timeInterval timeout timeproperty timerel timesFailed
    timesSent triggerReason unchanged unitCode updated uri
""")

# Terms whose IRI differs from the term (`has...` object properties, GeoJSON, Dublin Core).
_RENAMED = {
    "containedBy": "ngsi-ld:isContainedBy",
    "entityMapLifetime": "ngsi-ld:hasEntityMapLifetime",
    "joinLevel": "ngsi-ld:hasJoinLevel",
    "key": "ngsi-ld:hasKey",
    "previousValue": "ngsi-ld:hasPreviousValue",
    "splitEntities": "ngsi-ld:hasSplitEntities",
    "value": "ngsi-ld:hasValue",
    "description": "http://purl.org/dc/terms/description",
    "title": "http://purl.org/dc/terms/title",
    "langString": "http://www.w3.org/1999/02/22-rdf-syntax-ns#langString",
    "geometry": "geojson:geometry",
    "properties": "geojson:properties",
    **{
        name: f"geojson:{name}"
        for name in _words(
            "Feature FeatureCollection GeometryCollection LineString MultiLineString MultiPoint "
            "MultiPolygon Point Polygon"
        )
    },
}

_DATETIME = _words("""
    contextSourceTimeAt createdAt deletedAt endAt endTimeAt expiresAt lastFailure
    lastNotification lastSuccess lastUsedAt modifiedAt notifiedAt observedAt startAt timeAt
""")

_IRI_VALUED = {
    "datasetId": "ngsi-ld:datasetId",
    "entityId": "ngsi-ld:entityId",
    "instanceId": "ngsi-ld:instanceId",
    "object": "ngsi-ld:hasObject",
    "previousObject": "ngsi-ld:hasPreviousObject",
    "subscriptionId": "ngsi-ld:subscriptionId",
    "success": "ngsi-ld:success",
    "tenant": "ngsi-ld:tenant",
}

_VOCAB_VALUED = {
    "attributeList": "ngsi-ld:attributeList",
    "attributeName": "ngsi-ld:attributeName",
    "attributeNames": "ngsi-ld:attributeNames",
    "attributeTypes": "ngsi-ld:attributeTypes",
    "attributes": "ngsi-ld:attributes",
    "objectType": "ngsi-ld:hasObjectType",
    "previousVocab": "ngsi-ld:hasPreviousVocab",
    "propertyNames": "ngsi-ld:propertyNames",
    "relationshipNames": "ngsi-ld:relationshipNames",
    "typeList": "ngsi-ld:typeList",
    "typeName": "ngsi-ld:typeName",
    "typeNames": "ngsi-ld:typeNames",
    "valueType": "ngsi-ld:hasValueType",
    "vocab": "ngsi-ld:hasVocab",
    "watchedAttributes": "ngsi-ld:watchedAttributes",
}

_JSON_VALUED = {
    "contextSourceExtras": "ngsi-ld:contextSourceExtras",
    "json": "ngsi-ld:hasJSON",
    "previousJson": "ngsi-ld:hasPreviousJson",
    "problemDetails": "ngsi-ld:problemDetails",
}

_LISTS = {
    "bbox": "geojson:bbox",
    "coordinates": "geojson:coordinates",
    "languageMaps": "ngsi-ld:hasLanguageMaps",
    "objectList": "ngsi-ld:hasObjectList",
    "objectLists": "ngsi-ld:hasObjectLists",
    "objects": "ngsi-ld:hasObjects",
    "objectsLists": "ngsi-ld:hasObjectsLists",
    "previousObjectList": "ngsi-ld:hasPreviousObjectList",
    "previousValueList": "ngsi-ld:hasPreviousValueList",
    "valueList": "ngsi-ld:hasValueList",
    "valueLists": "ngsi-ld:hasValueLists",
    "values": "ngsi-ld:hasValues",
    "vocabs": "ngsi-ld:hasVocabs",
    **{
        name: f"ngsi-ld:{name}"
        for name in _words(
            "avg distinctCount entityList jsons max min orderBy snapshotQueries "
            "snapshotQueriesDetails snapshotTemporalQueries snapshotTemporalQueriesDetails "
            "stddev sum sumsq totalCount"
        )
    },
}

_OTHER_CONTAINERS = {
    "dataset": ("ngsi-ld:hasDataset", "@index"),
    "entityMap": ("ngsi-ld:hasEntityMap", "@index"),
    "features": ("geojson:features", "@set"),
    "languageMap": ("ngsi-ld:hasLanguageMap", "@language"),
    "previousLanguageMap": ("ngsi-ld:hasPreviousLanguageMap", "@language"),
}


def _build() -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "@version": 1.1,
        "@protected": True,
        "ngsi-ld": NGSI_LD,
        "geojson": GEOJSON,
        "id": "@id",
        "type": "@type",
    }
    ctx.update({name: f"ngsi-ld:{name}" for name in _SAME_NAME})
    ctx.update(_RENAMED)
    ctx.update({name: {"@id": f"ngsi-ld:{name}", "@type": "DateTime"} for name in _DATETIME})
    ctx.update({name: {"@id": iri, "@type": "@id"} for name, iri in _IRI_VALUED.items()})
    ctx.update({name: {"@id": iri, "@type": "@vocab"} for name, iri in _VOCAB_VALUED.items()})
    ctx.update({name: {"@id": iri, "@type": "@json"} for name, iri in _JSON_VALUED.items()})
    ctx.update({name: {"@id": iri, "@container": "@list"} for name, iri in _LISTS.items()})
    ctx.update({name: {"@id": i, "@container": c} for name, (i, c) in _OTHER_CONTAINERS.items()})
    ctx["@vocab"] = DEFAULT_VOCAB
    return ctx


CORE_CONTEXT: Final[dict[str, Any]] = _build()
"""The core context object (the value of `@context`). Treat as read-only."""


def core_context_document() -> dict[str, Any]:
    """A fresh copy of the core context document, e.g. to serve it or hand it to pyld."""
    return {"@context": copy.deepcopy(CORE_CONTEXT)}
