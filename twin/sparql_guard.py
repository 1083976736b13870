"""SPARQL queries in a child process that can be killed: the only way to really stop one.

pyoxigraph 0.5 has no cancellation: a query runs to its end in the thread that started it, a
signal handler only runs after it returns, and an exception raised by a custom function is
swallowed as an evaluation error. So a query that must be stoppable runs in a child process
and is killed (SIGKILL) when its deadline passes; the CPU work ends with the process.

- An in-memory store is shared with the child by `os.fork()` (copy-on-write), taken while the
  tenant's write lock is held so that no writer is inside the store at that instant.
- An on-disk (RocksDB) store cannot be forked (its background threads' locks deadlock the
  child), so a fresh interpreter (`python -m twin.sparql_guard`) opens it with `Store.read_only`,
  under the write lock until it is open: it sees every committed write, flushed or not.

The child streams its answer through a pipe as frames; the pipe is the bounded queue between
the engine and the HTTP response (a child blocks on a full pipe). Solutions travel as SPARQL
TSV and triples as N-Triples: both are lossless for RDF terms, one line per row, so counting
newlines enforces the row limit exactly, and pyoxigraph (de)serialises them at native speed.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn, Protocol, cast

import orjson
from pyoxigraph import (
    NamedNode,
    QueryBoolean,
    QueryResultsFormat,
    QuerySolutions,
    RdfFormat,
    Store,
    Triple,
    parse,
    parse_query_results,
    serialize,
)

from twin.errors import BadRequestData, InternalError, NgsiLdError, QueryTimeout, TooManyResults

# Frame kinds: what the query is, data, the row limit was reached, error, end of answer.
_HEAD, _READY, _DATA, _TRUNCATED, _ERROR, _END = b"H", b"R", b"D", b"T", b"E", b"Z"
_FRAME = struct.Struct("!cI")
# The child holds back this much before its first frame, so that small answers (and a row
# limit reached early) are known before the HTTP status is sent.
FIRST_WINDOW = 64 * 1024
CHUNK = 64 * 1024

SOLUTIONS, BOOLEAN, GRAPH = "solutions", "boolean", "graph"


Lock = AbstractContextManager[Any]


@dataclass
class QueryRequest:
    """What the child needs to run one query; picklable except `custom_functions`."""

    query: str
    default_graphs: Sequence[str] | None = None
    named_graphs: Sequence[str] | None = None
    custom_functions: Mapping[str, Any] = field(default_factory=dict)
    max_rows: int | None = None

    def options(self) -> dict[str, Any]:
        """pyoxigraph query options: the default graph is the union unless graphs are named."""
        options: dict[str, Any] = {}
        if self.default_graphs:
            options["default_graph"] = [NamedNode(g) for g in self.default_graphs]
        else:
            options["use_default_graph_as_union"] = True
        if self.named_graphs:
            options["named_graphs"] = [NamedNode(g) for g in self.named_graphs]
        if self.custom_functions:
            options["custom_functions"] = {
                NamedNode(name): function for name, function in self.custom_functions.items()
            }
        return options


def run_query(store: Store, request: QueryRequest) -> QuerySolutions | QueryBoolean | Any:
    """In-process evaluation (no deadline): bad IRIs and syntax become 400 errors."""
    try:
        return store.query(request.query, **request.options())
    except SyntaxError as error:
        raise BadRequestData(f"invalid SPARQL query: {error}") from None
    except ValueError as error:  # an invalid graph IRI
        raise BadRequestData(str(error)) from None


# -- the child -------------------------------------------------------------------------------


class _Truncated(Exception):
    """Raised inside the serialiser's write() to stop it at the row limit."""


class _FrameWriter:
    """A binary file for pyoxigraph's serialisers: counts lines, frames, writes to the pipe."""

    def __init__(self, fd: int, max_lines: int | None) -> None:
        self.fd = fd
        self.max_lines = max_lines
        self.lines = 0
        self.buffer = bytearray()
        self.window = FIRST_WINDOW

    def write(self, data: bytes) -> int:
        size = len(data)
        chunk = bytes(data)
        if self.max_lines is not None:
            room = self.max_lines - self.lines
            found = chunk.count(b"\n")
            if found > room:
                cut = -1
                for _ in range(room):
                    cut = chunk.index(b"\n", cut + 1)
                self.buffer += chunk[: cut + 1]
                self.lines += room
                raise _Truncated
            self.lines += found
        self.buffer += chunk
        if len(self.buffer) >= self.window:
            self.flush_frame()
        return size

    def flush(self) -> None:
        """Called by the serialiser; frames are sent by size, not on its flushes."""

    def flush_frame(self) -> None:
        if self.buffer:
            send_frame(self.fd, _DATA, bytes(self.buffer))
            self.buffer.clear()
        self.window = CHUNK


def send_frame(fd: int, kind: bytes, payload: bytes = b"") -> None:
    data = memoryview(_FRAME.pack(kind, len(payload)) + payload)
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _answer(store: Store, request: QueryRequest, fd: int) -> None:
    """Evaluate and stream; every outcome ends in an END, TRUNCATED or ERROR frame."""
    try:
        result = store.query(request.query, **request.options())
    except SyntaxError as error:
        send_frame(fd, _ERROR, orjson.dumps({"kind": "syntax", "detail": str(error)}))
        return
    except ValueError as error:
        send_frame(fd, _ERROR, orjson.dumps({"kind": "syntax", "detail": str(error)}))
        return
    if isinstance(result, QueryBoolean):
        send_frame(fd, _HEAD, BOOLEAN.encode())
        send_frame(fd, _DATA, b"true" if bool(result) else b"false")
        send_frame(fd, _END)
        return
    is_solutions = isinstance(result, QuerySolutions)
    send_frame(fd, _HEAD, (SOLUTIONS if is_solutions else GRAPH).encode())
    header = 1 if is_solutions else 0
    limit = None if request.max_rows is None else request.max_rows + header
    writer = _FrameWriter(fd, limit)
    try:
        output = cast(IO[bytes], writer)  # a file as far as pyoxigraph is concerned
        if isinstance(result, QuerySolutions):
            result.serialize(output, format=QueryResultsFormat.TSV)
        else:
            serialize(result, output, format=RdfFormat.N_TRIPLES)
    except _Truncated:
        if writer.window != FIRST_WINDOW:  # part of the answer is out: send the rest of it
            writer.flush_frame()
        send_frame(fd, _TRUNCATED)
        return
    writer.flush_frame()
    send_frame(fd, _END)


def _child_main(store: Store, request: QueryRequest, fd: int) -> NoReturn:
    """Never returns into the parent's code: whatever happens, the process ends here."""
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _answer(store, request, fd)
    except BrokenPipeError:
        code = 3  # the parent stopped reading: nobody wants the rest
    except BaseException as error:
        code = 1
        with contextlib.suppress(Exception):
            detail = f"{type(error).__name__}: {error}"
            send_frame(fd, _ERROR, orjson.dumps({"kind": "internal", "detail": detail}))
    finally:
        os._exit(code)


# -- the parent ------------------------------------------------------------------------------


class _Child(Protocol):
    def kill(self) -> None: ...
    def reap(self) -> None: ...


_LIVE: set[GuardedQuery] = set()
_LIVE_LOCK = threading.Lock()


def stop_all() -> None:
    """Kill every running query child (server shutdown)."""
    with _LIVE_LOCK:
        running = list(_LIVE)
    for job in running:
        job.close()


class GuardedQuery:
    """One query running in a child: frames in, with the deadline enforced on every read."""

    def __init__(
        self,
        child: _Child,
        fd: int,
        deadline: float,
        max_rows: int | None,
        keep: Any = None,
        pool: ForkedPool | None = None,
    ) -> None:
        self.pool = pool  # a warm worker goes back to it after a complete answer
        self.reusable = True
        self.child = child
        self.fd = fd
        self.deadline = deadline
        self.timeout = max(0.0, deadline - time.monotonic())
        self.max_rows = max_rows
        self.keep = keep  # the multiprocessing Connection owning fd, kept open
        self.closed = False
        self.kind = ""
        self.pending: list[bytes] = []  # data frames read ahead of the consumer
        self.finished = False  # END, TRUNCATED or ERROR seen
        self.truncated = False
        with _LIVE_LOCK:
            _LIVE.add(self)

    def read_frame(self) -> tuple[bytes, bytes]:
        """The next frame; kills the child and raises QueryTimeout at the deadline."""
        header = self._read_exactly(_FRAME.size)
        kind, size = _FRAME.unpack(header)
        return kind, self._read_exactly(size) if size else b""

    def _read_exactly(self, size: int) -> bytes:
        parts: list[bytes] = []
        while size:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                self.close()
                raise QueryTimeout(
                    f"the query was stopped after {math.ceil(self.timeout * 10) / 10:g} s "
                    "(URBIS_SPARQL_TIMEOUT): "
                    "narrow it, add LIMIT, or split it"
                )
            data = os.read(self.fd, min(size, 1 << 20))
            if not data:
                self.close()
                raise InternalError("the query process ended without an answer")
            parts.append(data)
            size -= len(data)
        return b"".join(parts)

    def start(self) -> str:
        """Wait for the head and the first data (or the end): errors surface here."""
        while True:
            kind, payload = self.read_frame()
            if kind == _READY:
                continue
            if kind == _HEAD:
                self.kind = payload.decode()
                continue
            self._take(kind, payload)
            if self.truncated:  # the limit is known before anything was sent: refuse whole
                self.close()
                raise TooManyResults(self._too_many())
            if self.pending or self.finished:
                return self.kind

    def _take(self, kind: bytes, payload: bytes) -> None:
        if kind == _DATA:
            self.pending.append(payload)
        elif kind == _END:
            self.finished = True
        elif kind == _TRUNCATED:
            self.finished = self.truncated = True
        elif kind == _ERROR:
            self.finished = True
            error = _child_error(payload)
            self.reusable = isinstance(error, BadRequestData)
            self.close()
            raise error
        else:
            self.close()
            raise InternalError(f"unexpected frame {kind!r} from the query process")

    def _too_many(self) -> str:
        return (
            f"the answer has more than {self.max_rows} rows or triples: add LIMIT, "
            "narrow the query, or export the data (urbis export)"
        )

    def chunks(self) -> Generator[bytes, None, None]:
        """The data, in order; TooManyResults when the limit cut it, QueryTimeout at the
        deadline. Closing the iterator early kills the child."""
        try:
            while True:
                while self.pending:
                    yield self.pending.pop(0)
                if self.finished:
                    if self.truncated:
                        raise TooManyResults(self._too_many())
                    return
                self._take(*self.read_frame())
        finally:
            self.close()

    def close(self) -> None:
        """Kill (if still running) and reap the child; idempotent."""
        if self.closed:
            return
        self.closed = True
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if self.pool is not None and isinstance(self.child, _Worker):
            if self.finished and self.reusable:
                self.pool.release(self.child)
            else:
                self.child.stop()
            return
        if not self.finished:
            self.child.kill()
        with contextlib.suppress(OSError):
            if self.keep is not None:
                self.keep.close()
            else:
                os.close(self.fd)
        self.child.reap()


def _child_error(payload: bytes) -> NgsiLdError:
    info = orjson.loads(payload)
    if info.get("kind") == "syntax":
        return BadRequestData(f"invalid SPARQL query: {info['detail']}")
    return InternalError(f"the query failed: {info.get('detail', 'unknown error')}")


def _keep_only(*fds: int) -> None:
    """In a fresh child: close every inherited descriptor but these (and stdio), so that the
    server's sockets are not held open by a query process."""
    low = 3
    for fd in sorted(fds):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, _MAX_FD)


_MAX_FD = 1 << 16


def _worker_main(store: Store, requests: int, answers: int) -> NoReturn:
    """A warm worker: answers pickled requests one after the other until its pipe closes."""
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        while True:
            header = _read_all(requests, _FRAME.size)
            if not header:
                break
            _, size = _FRAME.unpack(header)
            request = pickle.loads(_read_all(requests, size))
            _answer(store, request, answers)
    except BrokenPipeError:
        code = 3
    except BaseException as error:
        code = 1
        with contextlib.suppress(Exception):
            detail = f"{type(error).__name__}: {error}"
            send_frame(answers, _ERROR, orjson.dumps({"kind": "internal", "detail": detail}))
    finally:
        os._exit(code)


def _read_all(fd: int, size: int) -> bytes:
    parts: list[bytes] = []
    while size:
        data = os.read(fd, size)
        if not data:
            return b""
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


@dataclass
class _Worker:
    """A forked process holding the store as it was at `version` (copy-on-write)."""

    pid: int
    requests: int  # parent -> worker (-1: a one-shot child that got its request by fork)
    answers: int  # worker -> parent
    version: int

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def reap(self) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def stop(self) -> None:
        self.kill()
        for fd in (self.requests, self.answers):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.reap()


class ForkedPool:
    """Query processes forked from this one, for an in-memory store.

    Forking costs milliseconds (page tables) and the first pass over the store in a new
    process pays copy-on-write faults, so a worker that answered completely is kept warm and
    reused while the store has not changed since its fork (`version`, bumped by every write);
    a stale or killed worker is replaced by a new fork. Requests that cannot be pickled
    (closures as custom functions) get a one-shot child that receives them through the fork.
    """

    def __init__(self, store: Store, write_lock: Lock, max_idle: int = 2) -> None:
        self.store = store
        self.write_lock = write_lock
        self.max_idle = max_idle
        self.version = 0
        self.idle: list[_Worker] = []
        self._lock = threading.Lock()

    def bump(self) -> None:
        """Called under the write lock after each write: warm workers are now stale."""
        self.version += 1

    def start(self, request: QueryRequest, timeout: float) -> GuardedQuery:
        deadline = time.monotonic() + timeout
        try:
            payload: bytes | None = pickle.dumps(request)
        except (pickle.PicklingError, AttributeError, TypeError):
            payload = None
        if payload is None:
            worker = self._fork(request)
            return GuardedQuery(worker, worker.answers, deadline, request.max_rows)
        worker = self._take() or self._fork(None)
        try:
            send_frame(worker.requests, b"Q", payload)
        except OSError:  # the worker died while idle
            worker.stop()
            worker = self._fork(None)
            send_frame(worker.requests, b"Q", payload)
        return GuardedQuery(worker, worker.answers, deadline, request.max_rows, pool=self)

    def _take(self) -> _Worker | None:
        stale: list[_Worker] = []
        found = None
        with self._lock:
            while self.idle:
                worker = self.idle.pop()
                if worker.version == self.version:
                    found = worker
                    break
                stale.append(worker)
        for worker in stale:
            worker.stop()
        return found

    def release(self, worker: _Worker) -> None:
        with self._lock:
            if worker.version == self.version and len(self.idle) < self.max_idle:
                self.idle.append(worker)
                return
        worker.stop()

    def _fork(self, one_shot: QueryRequest | None) -> _Worker:
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        with self.write_lock:  # no writer inside the store while it is copied
            version = self.version
            pid = os.fork()
            if pid == 0:  # the child: never returns from here
                try:
                    _keep_only(requests_r, answers_w)
                    if one_shot is not None:
                        _child_main(self.store, one_shot, answers_w)
                    _worker_main(self.store, requests_r, answers_w)
                finally:
                    os._exit(1)
        os.close(requests_r)
        os.close(answers_w)
        if one_shot is not None:
            os.close(requests_w)
            requests_w = -1
        return _Worker(pid, requests_w, answers_r, version)

    def close(self) -> None:
        with self._lock:
            idle, self.idle = self.idle, []
        for worker in idle:
            worker.stop()


@dataclass
class _Subprocess:
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        self.process.kill()

    def reap(self) -> None:
        self.process.wait()


def start_on_disk(
    path: str, request: QueryRequest, write_lock: Lock, timeout: float
) -> GuardedQuery | None:
    """A fresh interpreter (`python -m twin.sparql_guard`) opens the store read-only and
    answers on its stdout; None when the request cannot be sent to it (custom functions that
    cannot be pickled): the caller then runs it in-process."""
    try:
        payload = pickle.dumps((path, request))
    except (pickle.PicklingError, AttributeError, TypeError):
        return None
    deadline = time.monotonic() + timeout
    process = subprocess.Popen(
        [sys.executable, "-m", "twin.sparql_guard"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )
    assert process.stdin is not None and process.stdout is not None
    job = GuardedQuery(
        _Subprocess(process),
        process.stdout.fileno(),
        deadline,
        request.max_rows,
        keep=process.stdout,
    )
    with write_lock:  # no write while the child opens the store (it sees the state at open)
        try:
            process.stdin.write(payload)
            process.stdin.close()
        except OSError:
            job.close()
            raise InternalError("the query process could not be started") from None
        kind, payload = job.read_frame()
    if kind != _READY:
        job._take(kind, payload)
    return job


def _disk_main() -> NoReturn:
    """`python -m twin.sparql_guard`: one query on an on-disk store, frames on stdout."""
    path, request = pickle.loads(sys.stdin.buffer.read())
    fd = sys.stdout.fileno()
    try:
        store = Store.read_only(path)
    except OSError as error:
        send_frame(fd, _ERROR, orjson.dumps({"kind": "internal", "detail": str(error)}))
        os._exit(1)
    send_frame(fd, _READY)
    _child_main(store, request, fd)


# -- results as pyoxigraph objects ------------------------------------------------------------


class FrameReader:
    """A binary file over the child's data frames, for pyoxigraph's lazy parsers."""

    def __init__(self, job: GuardedQuery) -> None:
        self.job = job
        self.chunks: Generator[bytes, None, None] = job.chunks()
        self.buffer = b""

    def read(self, size: int = -1) -> bytes:
        if not self.buffer:
            self.buffer = next(self.chunks, b"")
        if size < 0 or size >= len(self.buffer):
            data, self.buffer = self.buffer, b""
        else:
            data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def close(self) -> None:
        self.chunks.close()
        self.job.close()  # also when the data was never read (a generator never started)

    def __del__(self) -> None:
        self.close()


def as_result(job: GuardedQuery) -> QuerySolutions | QueryBoolean | Iterator[Triple]:
    """The child's answer as the pyoxigraph objects an in-process query returns, lazily."""
    reader = FrameReader(job)
    if job.kind == BOOLEAN:
        value = b"".join(job.chunks())  # to the end: the worker stays warm
        reader.close()
        return parse_query_results(
            b'{"head":{},"boolean":' + value + b"}", format=QueryResultsFormat.JSON
        )
    if job.kind == SOLUTIONS:
        solutions = parse_query_results(cast(IO[bytes], reader), format=QueryResultsFormat.TSV)
        assert isinstance(solutions, QuerySolutions)
        return solutions
    return (quad.triple for quad in parse(cast(IO[bytes], reader), format=RdfFormat.N_TRIPLES))


if __name__ == "__main__":
    _disk_main()
