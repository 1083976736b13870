"""SPARQL features: the protocol, SERVICE checks, update, result streaming."""
