"""SPARQL queries in a child process that can be killed: the only way to really stop one.

pyoxigraph 0.5 has no cancellation: a query runs to its end in the thread that started it, a
signal handler only runs after it returns, and an exception raised by a custom function is
swallowed as an evaluation error. So a query that must be stoppable runs in a child process
and is killed (SIGKILL) when its deadline passes; the CPU work ends with the process.

- An in-memory store is shared with the child by `os.fork()` (copy-on-write), taken while the
  tenant's write lock is held so that no writer is inside the store at that instant.
- An on-disk (RocksDB) store cannot be forked (its background threads' locks deadlock the
  child), so pre-started interpreters (`DiskPool`, each `python -m
  urbis.twin.store.query_workers`) open it with `Store.read_only` under the write lock (they
  see every committed write, flushed or not) and keep it open for the next queries until a
  write changes the store's version.

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
from pathlib import Path
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

from urbis.twin.errors import (
    BadRequestData,
    InternalError,
    NgsiLdError,
    QueryTimeout,
    TooManyResults,
)

# Frame kinds: what the query is, data, the row limit was reached, error, end of answer.
_HEAD, _READY, _DATA, _TRUNCATED, _ERROR, _END = b"H", b"R", b"D", b"T", b"E", b"Z"
# Disk workers only: imports done (once, at start), and a query request (parent -> worker).
_STARTED, _QUERY = b"S", b"Q"
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


class _Pool(Protocol):
    """Where a worker goes after its query: back to the idle list, or stopped."""

    def release(self, worker: Any) -> None: ...
    def discard(self, worker: Any) -> None: ...


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
        pool: _Pool | None = None,
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
        if self.pool is not None:
            if self.finished and self.reusable:
                self.pool.release(self.child)
            else:
                self.pool.discard(self.child)
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

    reaped: bool = False

    def kill(self) -> None:
        if self.reaped:  # its pid may belong to another process by now
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def reap(self) -> None:
        if not self.reaped:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.reaped = True

    def stop(self) -> None:
        """Kill, close, reap; idempotent: a second close could hit a reused descriptor."""
        self.kill()
        for fd in (self.requests, self.answers):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.requests = self.answers = -1
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

    def discard(self, worker: _Worker) -> None:
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


# -- on-disk stores: pre-started interpreters that keep a read-only store open -----------------

_LIFE: tuple[int, int] | None = None  # (read, write): the workers see EOF when we are gone
_LIFE_LOCK = threading.Lock()
STARTUP_TIMEOUT = 120.0  # seconds a new interpreter may take to import (a loaded machine)


def _life_pipe() -> int:
    """The read end every disk worker inherits. Its write end stays open in this process
    only (not inheritable), so the kernel closes it when the server dies, however it dies:
    the workers' watchdogs then see EOF and exit (no orphans)."""
    global _LIFE
    with _LIFE_LOCK:
        if _LIFE is None:
            _LIFE = os.pipe()
        return _LIFE[0]


@dataclass(eq=False)
class DiskWorker:
    """A `python -m urbis.twin.store.query_workers` process; `version` is the store version
    its read-only store shows (-1: none open yet)."""

    process: subprocess.Popen[bytes]
    requests: int  # parent -> worker
    answers: int  # worker -> parent
    version: int = -1
    kept: bool = True  # False: an overflow worker, stopped after its query
    started: bool = False  # its STARTED frame (imports done) was read
    queries: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()

    def reap(self) -> None:
        self.process.wait()

    def stop(self) -> None:
        """Kill, close, reap; idempotent: a second close could hit a reused descriptor."""
        self.kill()
        for fd in (self.requests, self.answers):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.requests = self.answers = -1
        self.reap()


def spawn_disk_worker() -> DiskWorker:
    """Start an interpreter; it imports, says STARTED, then waits for requests on stdin."""
    life = _life_pipe()
    requests_r, requests_w = os.pipe()
    answers_r, answers_w = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "urbis.twin.store.query_workers", str(life)],
            stdin=requests_r,
            stdout=answers_w,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            pass_fds=(life,),
            cwd=_IMPORT_ROOT,
        )
    except OSError:
        for fd in (requests_r, requests_w, answers_r, answers_w):
            os.close(fd)
        raise InternalError("the query process could not be started") from None
    os.close(requests_r)
    os.close(answers_w)
    return DiskWorker(process, requests_w, answers_r)


# The directory `urbis` is imported from (src/): the worker must import the same code.
_IMPORT_ROOT = str(Path(__file__).resolve().parents[3])


def _await_started(worker: DiskWorker, timeout: float) -> bool:
    """Consume the worker's STARTED frame (imports done); False when it did not come."""
    deadline = time.monotonic() + timeout
    header = b""
    while len(header) < _FRAME.size:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([worker.answers], [], [], remaining)[0]:
            return False
        data = os.read(worker.answers, _FRAME.size - len(header))
        if not data:
            return False
        header += data
    kind, size = _FRAME.unpack(header)
    return bool(kind == _STARTED and size == 0)


class _WorkerGone(InternalError):
    """The worker ended before it took the query: safe to hand the query to another."""


class DiskPool:
    """Query interpreters for one on-disk tenant, started ahead and kept warm.

    A worker opens the store with `Store.read_only` for a query and keeps it open while the
    store's version (bumped by every write, under the write lock) is unchanged; after a write
    the next query reopens it (10-50 ms; the open happens under the write lock, so it sees
    every committed write). At most `size` workers live per tenant; a query that finds them
    all busy gets an extra one that is stopped after it. A worker killed at its deadline is
    replaced in the background: after its first query the pool keeps `size` workers.
    """

    def __init__(self, path: str, write_lock: Lock, size: int = 2) -> None:
        self.path = path
        self.write_lock = write_lock
        self.size = max(1, size)
        self.version = 0
        self.idle: list[DiskWorker] = []
        self.alive = 0  # kept workers: idle, busy, or starting
        self.spawned = 0  # interpreters started over the pool's life (kept and extra)
        self.opens = 0  # read-only opens requested (a first open or a reopen after writes)
        self.last_pid = 0  # the worker that took the last query (tests, diagnostics)
        self.closed = False
        self._starting: set[DiskWorker] = set()
        self._lock = threading.Lock()

    def bump(self) -> None:
        """Called under the write lock after each write: open read-only stores are stale."""
        self.version += 1

    def prestart(self) -> None:
        """Start the workers in the background, so that the first query finds one ready."""
        self._top_up()

    def start(self, request: QueryRequest, timeout: float) -> GuardedQuery | None:
        """The query running in a worker; None when the request cannot be pickled."""
        try:
            payload = pickle.dumps((self.path, request))
        except (pickle.PicklingError, AttributeError, TypeError):
            return None
        deadline = time.monotonic() + timeout
        try:
            return self._hand_over(payload, deadline, request.max_rows)
        except InternalError as error:
            if not isinstance(error, _WorkerGone):
                raise
        # The worker was gone before the query reached it (killed or dead while idle, which
        # `poll()` cannot always tell yet): nothing ran, so another worker may take it.
        return self._hand_over(payload, deadline, request.max_rows)

    def _hand_over(self, payload: bytes, deadline: float, max_rows: int | None) -> GuardedQuery:
        worker = self._take()
        while worker.process.poll() is not None:  # it died while idle (killed, out of memory)
            self.discard(worker)
            worker = self._take()
        self._top_up()
        self.last_pid = worker.pid
        job = GuardedQuery(worker, worker.answers, deadline, max_rows, pool=self)
        try:
            if not worker.started:  # a new interpreter: its imports, outside the write lock
                kind, frame = job.read_frame()
                if kind != _STARTED:
                    job._take(kind, frame)
                    job.close()
                    raise InternalError(f"unexpected frame {kind!r} from the query process")
                worker.started = True
            if worker.version == self.version:
                self._send(job, worker, payload, reopen=False)
            else:
                with self.write_lock:  # no writer inside the store while it is opened
                    version = self.version
                    self._send(job, worker, payload, reopen=True)
                    worker.version = version
        except InternalError as error:
            if job.closed and not job.finished and not job.kind:  # EOF before READY
                raise _WorkerGone(error.detail) from None
            raise
        return job

    def _send(self, job: GuardedQuery, worker: DiskWorker, payload: bytes, reopen: bool) -> None:
        """Hand the request over and wait until the worker's store is open."""
        if reopen:
            self.opens += 1
        worker.queries += 1
        try:
            send_frame(worker.requests, _QUERY, (b"O" if reopen else b"K") + payload)
        except OSError:  # it died while idle
            job.reusable = False
            job.close()
            raise InternalError("the query process ended before the query") from None
        while True:
            kind, frame = job.read_frame()
            if kind == _STARTED:
                continue
            if kind == _READY:
                return
            job._take(kind, frame)  # an ERROR (the open failed) raises here
            job.close()
            raise InternalError(f"unexpected frame {kind!r} from the query process")

    def _take(self) -> DiskWorker:
        """An idle worker (one with the current version first), else a new one."""
        with self._lock:
            if self.idle:
                current = [w for w in self.idle if w.version == self.version]
                worker = current[-1] if current else self.idle[-1]
                self.idle.remove(worker)
                return worker
            kept = self.alive < self.size
            if kept:
                self.alive += 1
            self.spawned += 1
        try:
            worker = spawn_disk_worker()
        except BaseException:
            if kept:
                with self._lock:
                    self.alive -= 1
            raise
        worker.kept = kept
        return worker

    def release(self, worker: DiskWorker) -> None:
        """A worker that answered completely: idle again (its store stays open)."""
        with self._lock:
            if worker.kept and not self.closed:
                self.idle.append(worker)
                return
        worker.stop()

    def discard(self, worker: DiskWorker) -> None:
        """A worker killed at its deadline, or broken: stopped, and replaced ahead of need."""
        worker.stop()
        if worker.kept:
            with self._lock:
                self.alive -= 1
            self._top_up()

    def _top_up(self) -> None:
        """Start workers in the background until the pool has `size` of them."""
        with self._lock:
            missing = 0 if self.closed else self.size - self.alive
            self.alive += missing
            self.spawned += missing
        for _ in range(missing):
            threading.Thread(target=self._spawn_idle, name="sparql-worker", daemon=True).start()

    def _spawn_idle(self) -> None:
        try:
            worker = spawn_disk_worker()
        except NgsiLdError:
            with self._lock:
                self.alive -= 1
            return
        with self._lock:
            self._starting.add(worker)
        started = _await_started(worker, STARTUP_TIMEOUT)
        worker.started = started
        with self._lock:
            self._starting.discard(worker)
            if started and not self.closed:
                self.idle.append(worker)
                return
            self.alive -= 1
        worker.stop()

    def workers(self) -> list[int]:
        """Pids of the idle workers (tests, diagnostics)."""
        with self._lock:
            return [w.pid for w in self.idle]

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self.idle = self.idle, []
            starting = list(self._starting)
        for worker in idle:
            worker.stop()
        for worker in starting:  # its starter thread sees it fail and counts it out
            worker.kill()


def _watch_parent(life_fd: int) -> None:
    """Exit when the server is gone: EOF on the life pipe (or a new parent), checked by a
    thread, so that even a worker in the middle of a query ends (the engine releases the GIL)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            ended = select.select([life_fd], [], [], 1.0)[0]
            if ended or os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _preimport() -> None:
    """What the custom functions need, loaded while idle rather than during a query."""
    with contextlib.suppress(Exception):
        import urbis.twin.geo.geosparql  # noqa: F401


def _disk_worker_main(life_fd: int) -> NoReturn:
    """`python -m urbis.twin.store.query_workers LIFE_FD`: queries on an on-disk store, one
    after the other.

    A request is (reopen flag, pickled QueryRequest). The worker answers READY once its
    read-only store is open (reopened when asked: the server's store changed), then the
    answer's frames, and waits for the next request; EOF on stdin (the pool closed) ends it.
    """
    _watch_parent(life_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the server: the server decides
    requests, answers = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # a stray print can never corrupt the frames
    _preimport()
    send_frame(answers, _STARTED)
    store: Store | None = None
    code = 0
    try:
        while True:
            header = _read_all(requests, _FRAME.size)
            if not header:
                break
            _, size = _FRAME.unpack(header)
            body = _read_all(requests, size)
            try:
                path, request = pickle.loads(body[1:])
            except Exception as error:  # a function's module that cannot be imported here
                detail = orjson.dumps({"kind": "internal", "detail": f"bad request: {error}"})
                send_frame(answers, _ERROR, detail)
                continue
            if body[:1] == b"O" or store is None:
                store = None  # release the old snapshot's files first
                try:
                    store = Store.read_only(path)
                except OSError as error:
                    detail = orjson.dumps({"kind": "internal", "detail": str(error)})
                    send_frame(answers, _ERROR, detail)
                    continue
            send_frame(answers, _READY)
            _answer(store, request, answers)
    except BrokenPipeError:
        code = 3
    finally:
        os._exit(code)


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
    _disk_worker_main(int(sys.argv[1]))
