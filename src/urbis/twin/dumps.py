"""RDF dumps of the twin: the formats offered, and quads serialised a chunk at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from pyoxigraph import Quad, RdfFormat, serialize

CHUNK_QUADS = 10_000
# --format name -> (pyoxigraph format, media type, file suffix)
FORMATS: dict[str, tuple[RdfFormat, str, str]] = {
    "nquads": (RdfFormat.N_QUADS, "application/n-quads", ".nq"),
    "trig": (RdfFormat.TRIG, "application/trig", ".trig"),
}


def serialized(
    quads: Iterable[Quad],
    rdf_format: RdfFormat,
    *,
    chunk: int = CHUNK_QUADS,
    on_chunk: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """The quads as N-Quads or TriG, `chunk` quads at a time.

    Chunks concatenate into one valid document: TriG merges repeated blocks of a graph.
    """
    batch: list[Quad] = []
    for quad in quads:
        batch.append(quad)
        if len(batch) >= chunk:
            yield _bytes(batch, rdf_format)
            if on_chunk is not None:
                on_chunk(len(batch))
            batch = []
    if batch:
        yield _bytes(batch, rdf_format)
        if on_chunk is not None:
            on_chunk(len(batch))


def _bytes(quads: list[Quad], rdf_format: RdfFormat) -> bytes:
    data = serialize(quads, format=rdf_format)
    assert data is not None  # no output given: the bytes are returned
    return data
