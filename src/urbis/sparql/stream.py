"""Serialise a SPARQL answer in a worker thread into a bounded queue that the response drains.

pyoxigraph serialises at native speed but only into a blocking file; the event loop must not
block. A dedicated thread writes 64 KiB chunks into a queue of a few slots: when the client
reads slowly the queue fills, the thread waits, the lazy result is not pulled, and (for a
guarded query) the child process blocks on its pipe. Memory stays bounded by the slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from pyoxigraph import QueryBoolean, QueryResultsFormat, QuerySolutions, RdfFormat, serialize
from starlette.responses import StreamingResponse
from starlette.types import Send

from urbis.twin.errors import UrbisError

Format = QueryResultsFormat | RdfFormat

log = logging.getLogger("urbis")
CHUNK = 64 * 1024
SLOTS = 8  # chunks in flight between the thread and the response: at most 512 KiB
_END = object()


class _Cancelled(Exception):
    """The response went away: stop serialising."""


class _Channel:
    """Thread -> event loop, bounded: the producer blocks while SLOTS chunks are unread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.slots = threading.Semaphore(SLOTS)
        self.cancelled = False

    def put(self, item: Any) -> None:
        while not self.slots.acquire(timeout=0.5):
            if self.cancelled:
                raise _Cancelled
        if self.cancelled:
            raise _Cancelled
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def get(self) -> Any:
        item = await self.queue.get()
        self.slots.release()
        return item


class _ChunkWriter:
    """The binary file pyoxigraph writes into: 64 KiB chunks onto the channel."""

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) >= CHUNK:
            self.channel.put(bytes(self.buffer))
            self.buffer.clear()
        return len(data)

    def flush(self) -> None:
        """Chunks go by size; the end of the answer sends the rest."""

    def finish(self) -> None:
        if self.buffer:
            self.channel.put(bytes(self.buffer))
            self.buffer.clear()


@dataclass
class Ready:
    """First item on the channel: the answer exists, in this format."""

    media_type: str
    fmt: Format


def _produce(
    run: Callable[[], Any], choose: Callable[[Any], tuple[str, Format]], channel: _Channel
) -> None:
    """Runs the query and serialises its answer in this one thread: pyoxigraph's lazy results
    may only be touched by the thread that made them."""
    writer = _ChunkWriter(channel)
    result: Any = None
    try:
        result = run()
        media_type, fmt = choose(result)
        channel.put(Ready(media_type, fmt))
        output = cast(IO[bytes], writer)  # a file as far as pyoxigraph is concerned
        if isinstance(result, QuerySolutions | QueryBoolean):
            assert isinstance(fmt, QueryResultsFormat)
            result.serialize(output, format=fmt)
        else:
            assert isinstance(fmt, RdfFormat)
            serialize(_triples(result), output, format=fmt)
        writer.finish()
        channel.put(_END)
    except _Cancelled:
        pass
    except BaseException as error:
        # Drop the answer now (the traceback keeps this frame): a guarded query's process is
        # released or killed with it, not whenever the garbage collector runs.
        result = None
        if not isinstance(error, UrbisError):
            log.exception("SPARQL query failed", exc_info=error)
        with contextlib.suppress(_Cancelled):
            channel.put(error.with_traceback(None))
    finally:
        result = None


def _triples(result: Any) -> Iterator[Any]:
    yield from result


async def start(
    run: Callable[[], Any], choose: Callable[[Any], tuple[str, Format]]
) -> tuple[Ready, AsyncIterator[bytes | Aborted]]:
    """Run the query in a serialiser thread; return once its format is known (errors until
    then are raised here, before any status is sent) with the body to stream."""
    channel = _Channel(asyncio.get_running_loop())
    worker = threading.Thread(
        target=_produce, args=(run, choose, channel), name="sparql-serialiser", daemon=True
    )
    worker.start()
    try:
        first = await channel.get()
    except BaseException:
        channel.cancelled = True
        raise
    if isinstance(first, BaseException):
        channel.cancelled = True
        raise first
    return first, _body(channel)


class Aborted:
    """Last item of a body that must not look complete (see AbortableStreamingResponse)."""


ABORTED = Aborted()


async def _body(channel: _Channel) -> AsyncIterator[bytes | Aborted]:
    """The serialised answer. An error after the first byte (time limit, row limit) can no
    longer change the status: the response is then left incomplete (no final chunk, the
    connection closes), so the client sees a broken body, never a shortened answer that
    looks complete."""
    try:
        while True:
            item = await channel.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                log.warning("SPARQL answer aborted after it started: %s", item)
                yield ABORTED
                return
            yield item
    finally:
        channel.cancelled = True


class AbortableStreamingResponse(StreamingResponse):
    """A streaming response that can end without its final chunk (an aborted answer)."""

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.body_iterator:
            if isinstance(chunk, Aborted):
                return  # the server closes the connection: the body stays incomplete
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
