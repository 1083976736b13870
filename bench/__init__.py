"""Performance benchmark of the NGSI-LD API: `python -m bench.ngsi_bench` (see BENCHMARKS.md)."""
