"""Namespaces and well-known IRIs of the twin."""

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XSD = "http://www.w3.org/2001/XMLSchema#"
GEO = "http://www.opengis.net/ont/geosparql#"
GEOF = "http://www.opengis.net/def/function/geosparql/"
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
NGSI_LD = "https://uri.etsi.org/ngsi-ld/"
DEFAULT_CONTEXT = "https://uri.etsi.org/ngsi-ld/default-context/"
URBIS = "https://urbis.city/ns#"

DATASET_PREFIX = "urn:urbis:dataset:"
ENTITIES_GRAPH = "urn:urbis:graph:entities"
DEFAULT_DATASET = DATASET_PREFIX + "default"
# PROV-O/DCAT descriptions of every dataset graph (twin/provenance.py).
METADATA_GRAPH = "urn:urbis:graph:metadata"
# Bookkeeping predicates of the store (twin/rdf.py, twin/store/sparql.py), never attributes: kept
# out of discovery and refused as attribute names.
INTERNAL_PREDICATES = frozenset({URBIS + "document", URBIS + "dataset", URBIS + "storeTenant"})
