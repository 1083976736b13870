"""Urbis: an open digital-twin data space for cities.

One RDF twin (`urbis.twin`) served through NGSI-LD (`urbis.ngsild`, `urbis.api`) and SPARQL
(`urbis.sparql`), fed by connectors (`urbis.connectors`). `docs/layout.md` maps the packages
and the imports each may make.
"""

__version__ = "0.1.0"
