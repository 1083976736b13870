"""`urbis sources ...` and `urbis sync`: connector sources on the on-disk twin, offline.

Like `urbis load`, these commands open the twin directory themselves, so the server must not
be running on the same directory (an embedded store has one owner); use the API meanwhile.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from urbis.api.durable_state import open_durable_state
from urbis.api.settings import Settings
from urbis.connectors.definition import DefinitionError, SourceDefinition, to_toml
from urbis.connectors.registry import default_registry
from urbis.connectors.sources import SourceCatalog, UnknownSource
from urbis.connectors.sync import LiveSource, SyncReport, SyncState

sources_app = typer.Typer(
    help="Connector sources: definitions and quarantine.", no_args_is_help=True
)
console = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="On-disk twin directory (default: URBIS_DATA_DIR)."),
]
SourcesDir = Annotated[
    Path | None,
    typer.Option(
        "--sources-dir",
        help="A directory of definitions (default: URBIS_SOURCES_DIR, else the state store).",
    ),
]


def _settings(data_dir: Path | None, sources_dir: Path | None) -> Settings:
    overrides: dict[str, object] = {"open": True}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if sources_dir is not None:
        overrides["sources_dir"] = sources_dir
    return Settings(**overrides)  # type: ignore[arg-type]


def _catalog(settings: Settings) -> SourceCatalog:
    """The TOML files of --sources-dir, else the definitions in the data directory's state."""
    if settings.sources_dir is not None:
        return SourceCatalog(directory=settings.sources_dir, check=default_registry().check)
    if settings.data_dir is None:
        typer.secho("needs --data-dir or --sources-dir (or URBIS_DATA_DIR)", fg="red", err=True)
        raise typer.Exit(2)
    return SourceCatalog(
        open_durable_state(settings),
        check=default_registry().check,
        legacy_dir=settings.data_dir / "sources",
    )


def _fail(error: DefinitionError) -> None:
    for path, message in error.problems:
        typer.secho(f"{error.where}: {path + ': ' if path else ''}{message}", fg="red", err=True)
    raise typer.Exit(2)


def _anchored(source: SourceDefinition, base: Path) -> SourceDefinition:
    """A relative file endpoint made absolute against the definition file's folder."""
    endpoint = source.endpoint
    if endpoint is None or re.match(r"^[A-Za-z][A-Za-z0-9+.\-]+://", endpoint):
        return source
    path = Path(endpoint).expanduser()
    if path.is_absolute() or not (base / path).exists():
        return source
    return source.model_copy(update={"endpoint": str((base / path).resolve())})


@sources_app.command("add")
def add(
    file: Annotated[Path, typer.Argument(help="A source definition (TOML).")],
    data_dir: DataDir = None,
    sources_dir: SourcesDir = None,
    replace: Annotated[bool, typer.Option(help="Replace a source with the same id.")] = False,
) -> None:
    """Validate a definition and keep it in the state store (or copy it into --sources-dir)."""
    catalog = _catalog(_settings(data_dir, sources_dir))
    try:
        source = catalog.read(file)
    except DefinitionError as error:
        _fail(error)
        return
    if not replace and source.id in {s.id for s in catalog.list()}:
        typer.secho(f"source {source.id!r} exists; use --replace", fg="red", err=True)
        raise typer.Exit(1)
    anchored = _anchored(source, file.resolve().parent)
    text = file.read_text(encoding="utf-8") if anchored is source else to_toml(anchored)
    path = catalog.save(anchored, text=text)
    typer.echo(f"added {source.id} ({source.kind}) -> {path or catalog.location}")


@sources_app.command("list")
def list_sources(data_dir: DataDir = None, sources_dir: SourcesDir = None) -> None:
    """The sources, their kind, schedule and last sync; invalid files with their errors."""
    settings = _settings(data_dir, sources_dir)
    catalog = _catalog(settings)
    state = SyncState(open_durable_state(settings) if settings.data_dir else None)
    table = Table("id", "kind", "entity type", "schedule", "last sync", "status")
    for source in catalog.list():
        data = state.get(source.id, "report")
        report = SyncReport.from_dict(data) if data else None
        table.add_row(
            source.id,
            source.kind,
            source.entity_type or "-",
            source.schedule or ("live (urbis serve)" if _live(source) else "manual"),
            report.started if report else "never",
            report.status if report else "-",
        )
    Console().print(table)
    for error in catalog.problems():
        typer.secho(str(error), fg="yellow", err=True)


def _live(source: SourceDefinition) -> bool:
    from urbis.connectors.base import LiveConnector
    from urbis.connectors.registry import UnknownKind

    try:
        return issubclass(default_registry().get(source.kind), LiveConnector)
    except UnknownKind:
        return False


@sources_app.command("quarantine")
def quarantine(
    source: Annotated[str, typer.Argument(help="Source id.")],
    data_dir: DataDir = None,
    limit: Annotated[int, typer.Option(help="Entries to show.")] = 50,
    clear: Annotated[bool, typer.Option("--clear", help="Empty the quarantine.")] = False,
) -> None:
    """The records a sync could not use, with the reason."""
    from urbis.connectors.quarantine import Quarantine

    settings = _settings(data_dir, None)
    if settings.data_dir is None:
        typer.secho("needs --data-dir (or URBIS_DATA_DIR)", fg="red", err=True)
        raise typer.Exit(2)
    store = Quarantine(open_durable_state(settings))
    if clear:
        typer.echo(f"cleared {store.clear(source)} entries of {source}")
        return
    for entry in store.list(source, limit=limit):  # one line each: easy to grep
        typer.echo(f"{entry.key}\t{entry.time}\t{entry.reason}")
    typer.echo(f"{store.count(source)} quarantined record(s) in {source}")


def sync(
    sources: Annotated[list[str] | None, typer.Argument(help="Source ids.")] = None,
    all_sources: Annotated[bool, typer.Option("--all", help="Every source.")] = False,
    data_dir: DataDir = None,
    sources_dir: SourcesDir = None,
) -> None:
    """Sync sources into the on-disk twin, with a progress bar each and a final report."""
    from urbis.api.app import build_state

    settings = _settings(data_dir, sources_dir)
    if settings.data_dir is None:
        typer.secho("sync needs --data-dir (or URBIS_DATA_DIR)", fg="red", err=True)
        raise typer.Exit(2)
    if not sources and not all_sources:
        typer.secho("name sources to sync, or use --all", fg="red", err=True)
        raise typer.Exit(2)
    state = build_state(settings)
    manager = state.sources
    assert manager is not None
    try:
        ids = [s.id for s in manager.catalog.list()] if all_sources else list(sources or [])
        if all_sources:  # live sources are run by `urbis serve`, not synced
            live = [s.id for s in manager.catalog.list() if manager.is_live(s)]
            for source_id in live:
                typer.secho(f"{source_id}: live source, run by `urbis serve`; skipped", err=True)
            ids = [i for i in ids if i not in live]
        for error in manager.catalog.problems():
            typer.secho(str(error), fg="yellow", err=True)
        reports: list[SyncReport] = []
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.completed} records"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            for source_id in ids:
                task = progress.add_task(source_id, total=None)

                def advance(done: int, task: TaskID = task) -> None:
                    progress.update(task, completed=done)

                try:
                    reports.append(manager.sync(source_id, progress=advance))
                except (UnknownSource, DefinitionError, LiveSource) as exc:
                    reports.append(
                        SyncReport(source=source_id, run_id="", status="failed", errors=[str(exc)])
                    )
                progress.update(task, total=progress.tasks[task].completed or 1)
    finally:
        state.twin.close()
    _print_reports(reports)
    if any(r.status != "ok" for r in reports):
        raise typer.Exit(1)


def _print_reports(reports: list[SyncReport]) -> None:
    table = Table(
        "source", "status", "created", "updated", "unchanged", "removed", "quarantined", "duration"
    )
    for r in reports:
        table.add_row(
            r.source,
            r.status,
            str(r.created),
            str(r.updated),
            str(r.unchanged),
            str(r.removed),
            str(r.quarantined),
            f"{r.duration:.2f} s",
        )
    Console(width=120).print(table)
    for r in reports:
        for error in r.errors:
            typer.secho(f"{r.source}: {error}", fg="red", err=True)
