"""Export and backup: `urbis export` and `urbis restore`, and the streaming serialiser the
dataset download route shares.

An export is plain N-Quads or TriG of a tenant's quads (every graph: datasets, the entities'
documents, metadata) or of one dataset graph. Quads are read from the store lazily and written
in chunks, so memory stays flat whatever the size of the twin. Restoring a whole-tenant export
into an empty twin gives back the same entities: the spatial index is rebuilt from the
`geo:asWKT` triples when the tenant opens.

The operator reads through the access port too (twin/access.py, `OPERATOR`): with the default
policy that is everything; a policy that keeps graphs from the operator keeps them out of the
export as well.
A whole-tenant export to a file or directory also writes the deployment's state (twin/state:
subscriptions, registrations, hosted contexts, sources, their sync state and quarantine) as
JSON Lines beside the RDF: `FILE` gets `<stem>.state.jsonl`, a directory `state.jsonl`.
`restore` loads it with the RDF; an export without one (older versions) restores as before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer
from pyoxigraph import Quad, RdfFormat, parse
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from urbis.twin.access import ALLOW_ALL, OPERATOR, AccessPolicy, ReadScope
from urbis.twin.dumps import CHUNK_QUADS, FORMATS, serialized
from urbis.twin.errors import NgsiLdError
from urbis.twin.rdf import dataset_graph
from urbis.twin.state import StateItem, StateNotEmpty, StateStore, StoredDocument
from urbis.twin.state.legacy import IMPORTS
from urbis.twin.state.lines import StateFileError, read_lines, write_lines
from urbis.twin.store.base import DEFAULT_TENANT, StoreBackend, TenantStore, check_tenant

if TYPE_CHECKING:
    from urbis.api.settings import Settings

_SUFFIXES = {suffix: name for name, (_, _, suffix) in FORMATS.items()} | {".nquads": "nquads"}
DEFAULT_TENANT_FILE = "_default"  # file stem of the default tenant in an --all-tenants export
STATE_FILE = "state.jsonl"  # the state in an --all-tenants directory
STATE_SUFFIX = ".state.jsonl"  # the state beside a one-file export: backup.nq -> backup.state.jsonl

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="On-disk twin directory (default: URBIS_DATA_DIR)."),
]
Format = Annotated[
    str | None,
    typer.Option("--format", help="nquads or trig (default: from the file suffix, else nquads)."),
]
NoState = Annotated[
    bool,
    typer.Option(
        "--no-state",
        help="Leave out the state (subscriptions, registrations, contexts, sources, sync state).",
    ),
]


def quad_count(store: TenantStore, graph: str | None) -> int:
    """Quads in the named graphs (or one graph): the progress bar's total."""
    scope = f"<{graph}>" if graph is not None else "?g"
    return store.count(f"SELECT (COUNT(*) AS ?n) WHERE {{ GRAPH {scope} {{ ?s ?p ?o }} }}")


def is_empty(store: TenantStore) -> bool:
    probe = "SELECT (COUNT(*) AS ?n) WHERE { { SELECT * WHERE { GRAPH ?g { ?s ?p ?o } } LIMIT 1 } }"
    return store.count(probe) == 0


def format_for(path: Path | None, name: str | None) -> str:
    """The --format given, else the one the file suffix names, else N-Quads."""
    if name is not None:
        if name not in FORMATS:
            raise typer.BadParameter(
                f"unknown format {name!r}: use nquads or trig", param_hint="--format"
            )
        return name
    if path is not None:
        return _SUFFIXES.get(path.suffix.lower(), "nquads")
    return "nquads"


def _settings(data_dir: Path | None) -> Settings:
    from urbis.api.settings import Settings

    return Settings() if data_dir is None else Settings(data_dir=data_dir)


def _backend(data_dir: Path | None) -> StoreBackend:
    from urbis.api.services import build_backend

    settings = _settings(data_dir)
    if settings.store == "oxigraph" and settings.data_dir is None:
        typer.secho("needs --data-dir (or URBIS_DATA_DIR)", fg="red", err=True)
        raise typer.Exit(2)
    try:
        return build_backend(settings)
    except OSError as exc:
        typer.secho(
            f"cannot open the twin at {settings.data_dir}: {exc}\n"
            "A running server holds it: stop it, or download datasets with "
            "GET /datasets/{name}/dump.",
            fg="red",
            err=True,
        )
        raise typer.Exit(2) from None


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )


@contextmanager
def _output(path: Path | None) -> Iterator[IO[bytes]]:
    """stdout, or a file that appears only once complete (written beside it, then renamed)."""
    if path is None or str(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    partial = path.with_name(path.name + ".part")
    try:
        with partial.open("wb") as out:
            yield out
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def exported_graphs(
    store: TenantStore, tenant: str, graph: str | None, access: AccessPolicy = ALLOW_ALL
) -> list[str | None]:
    """What the operator may export of a tenant, asked of the access port: [None] for every
    quad (one pass over the store), else the graphs, each dumped on its own."""
    raw = ReadScope.decide(access, OPERATOR, tenant).raw
    if raw is None:
        return [graph]
    wanted = [graph] if graph is not None else store.graphs()
    return [g for g in wanted if g is not None and g in raw]


def _write_tenant(
    store: TenantStore,
    out: IO[bytes],
    rdf_format: RdfFormat,
    graphs: list[str | None],
    label: str,
) -> int:
    written = 0
    with _progress() as progress:
        total = sum(quad_count(store, g) for g in graphs)
        task = progress.add_task(label, total=total or None)

        def advance(n: int) -> None:
            nonlocal written
            written += n
            progress.advance(task, n)

        quads = (quad for g in graphs for quad in store.dump(g))
        for data in serialized(quads, rdf_format, on_chunk=advance):
            out.write(data)
    return written


def export(
    output: Annotated[
        Path | None,
        typer.Argument(help="File to write ('-' or none: stdout; a directory with --all-tenants)."),
    ] = None,
    data_dir: DataDir = None,
    tenant: Annotated[str, typer.Option(help="NGSI-LD tenant (default: the default one).")] = "",
    all_tenants: Annotated[
        bool, typer.Option("--all-tenants", help="Every tenant, one file each, into a directory.")
    ] = False,
    dataset: Annotated[
        str | None, typer.Option(help="Only this dataset (graph urn:urbis:dataset:NAME).")
    ] = None,
    rdf_format: Format = None,
    no_state: NoState = False,
) -> None:
    """Write the twin (a tenant, every tenant, or one dataset) as N-Quads or TriG, streamed,
    and the deployment's state beside a whole-tenant export."""
    fmt = format_for(output, rdf_format)
    graph = dataset_graph(dataset) if dataset is not None else None
    backend = _backend(data_dir)
    try:
        if all_tenants:
            if output is None or output.is_file():
                typer.secho("--all-tenants writes into a directory: give one", fg="red", err=True)
                raise typer.Exit(2)
            output.mkdir(parents=True, exist_ok=True)
            names = backend.tenants()
        else:
            names = [check_tenant(tenant)]
        for name in names:
            store = backend.tenant(name, create=False)
            if graph is not None and graph not in store.graphs():
                typer.secho(f"no dataset {dataset!r} in tenant {name!r}", fg="red", err=True)
                raise typer.Exit(1)
            target = output
            if all_tenants:
                assert output is not None
                target = output / ((name or DEFAULT_TENANT_FILE) + FORMATS[fmt][2])
            with _output(target) as out:
                label = f"tenant {name or '(default)'}" + (f" dataset {dataset}" if dataset else "")
                graphs = exported_graphs(store, name, graph)
                written = _write_tenant(store, out, FORMATS[fmt][0], graphs, label)
            typer.secho(f"exported {written} quads of {label}", err=True)
    finally:
        backend.close()
    if dataset is None and not no_state:
        _export_state(data_dir, _state_target(output, all_tenants))


def state_file_of(export_file: Path) -> Path:
    """Where a one-file export keeps its state: backup.nq -> backup.state.jsonl."""
    return export_file.with_name(export_file.stem + STATE_SUFFIX)


def _state_target(output: Path | None, all_tenants: bool) -> Path | None:
    if all_tenants:
        assert output is not None
        return output / STATE_FILE
    if output is None or str(output) == "-":
        return None
    return state_file_of(output)


def _open_state(data_dir: Path | None) -> StateStore | None:
    from urbis.api.durable_state import open_durable_state

    settings = _settings(data_dir)
    return open_durable_state(settings) if settings.data_dir is not None else None


def _exported(store: StateStore) -> Iterator[StateItem]:
    """The dump without the import markers: they describe this directory, not its state."""
    for item in store.dump():
        if not (isinstance(item, StoredDocument) and item.collection == IMPORTS):
            yield item


def _export_state(data_dir: Path | None, target: Path | None) -> None:
    if target is None:
        typer.secho(
            "the state (subscriptions, registrations, contexts, sources) is not written to "
            "standard output: export to a FILE to back it up too",
            fg="yellow",
            err=True,
        )
        return
    store = _open_state(data_dir)
    if store is None:
        typer.secho("no data directory: the state is in memory, none exported", err=True)
        return
    try:
        with _output(target) as out:
            documents, records = write_lines(_exported(store), out)
    finally:
        store.close()
    typer.secho(
        f"exported the state ({documents} documents, {records} records) to {target}", err=True
    )


def _restore_plan(files: list[Path], tenant: str | None) -> list[tuple[Path, str]]:
    """(file, tenant) pairs: a directory holds one export per tenant, named after it."""
    plan: list[tuple[Path, str]] = []
    for path in files:
        if path.is_dir():
            for item in sorted(path.iterdir()):
                if item.suffix.lower() in _SUFFIXES:
                    name = "" if item.stem == DEFAULT_TENANT_FILE else item.stem
                    plan.append((item, check_tenant(name)))
        else:
            plan.append((path, check_tenant(tenant or DEFAULT_TENANT)))
    return plan


def restore(
    files: Annotated[
        list[Path], typer.Argument(help="Exports (N-Quads or TriG), or --all-tenants directories.")
    ],
    data_dir: DataDir = None,
    tenant: Annotated[
        str | None, typer.Option(help="Tenant to restore a file into (default: the default one).")
    ] = None,
    rdf_format: Format = None,
    no_state: NoState = False,
) -> None:
    """Load an export into an empty twin (refuses a tenant that already holds data), and the
    state exported beside it into an empty state store."""
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        typer.secho(f"no such file: {', '.join(missing)}", fg="red", err=True)
        raise typer.Exit(2)
    plan = _restore_plan(files, tenant)
    state_file = None if no_state else _state_file(files)
    backend = _backend(data_dir)
    try:
        for name in dict.fromkeys(n for _, n in plan):
            if name in backend.tenants() and not is_empty(backend.tenant(name, create=False)):
                typer.secho(
                    f"tenant {name or '(default)'} already holds data: restore into an empty "
                    "twin (a new --data-dir)",
                    fg="red",
                    err=True,
                )
                raise typer.Exit(1)
        if state_file is not None:
            _restore_state(data_dir, state_file)
        with _progress() as progress:
            for path, name in plan:
                store = backend.tenant(name, create=True)
                fmt = FORMATS[format_for(path, rdf_format)][0]
                task = progress.add_task(f"{path.name} -> tenant {name or '(default)'}", total=None)
                batch: list[Quad] = []
                for quad in parse(path=str(path), format=fmt):
                    batch.append(quad)
                    if len(batch) >= CHUNK_QUADS:
                        store.apply((), batch, bulk=True)
                        progress.advance(task, len(batch))
                        batch = []
                store.apply((), batch, bulk=True)
                progress.advance(task, len(batch))
    except SyntaxError as exc:
        typer.secho(f"not a valid export: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    finally:
        backend.close()
    typer.secho(f"restored {len(plan)} file(s)", err=True)


def _state_file(files: list[Path]) -> Path | None:
    """The state exported beside these exports; more than one cannot be merged."""
    found = [
        candidate
        for candidate in (p / STATE_FILE if p.is_dir() else state_file_of(p) for p in files)
        if candidate.is_file()
    ]
    if len(found) > 1:
        typer.secho(
            f"several state files ({', '.join(map(str, found))}): restore one export with its "
            "state, the others with --no-state",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    return found[0] if found else None


def _restore_state(data_dir: Path | None, state_file: Path) -> None:
    """All of the state file or none of it (one transaction), into an empty state store."""
    store = _open_state(data_dir)
    if store is None:
        typer.secho(
            f"restoring the state in {state_file} needs --data-dir (or URBIS_DATA_DIR); "
            "or leave it out with --no-state",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    try:
        with state_file.open("rb") as lines:
            count = store.load(read_lines(lines, str(state_file)))
    except StateNotEmpty:
        typer.secho(
            f"{store.location} already holds state (subscriptions, sources...): restore into "
            "an empty twin (a new --data-dir)",
            fg="red",
            err=True,
        )
        raise typer.Exit(1) from None
    except (StateFileError, NgsiLdError) as error:
        detail = error.detail if isinstance(error, NgsiLdError) else str(error)
        typer.secho(f"not a valid state file: {detail}", fg="red", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.secho(f"restored the state ({count} items) from {state_file}", err=True)
