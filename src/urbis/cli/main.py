"""The `urbis` command: serve the API, load entity files, ask the twin in SPARQL."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="Urbis: an open digital-twin data space for cities.", no_args_is_help=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="On-disk twin directory (default: URBIS_DATA_DIR)."),
]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    data_dir: DataDir = None,
    memory: Annotated[bool, typer.Option("--memory", help="Keep the twin in memory.")] = False,
    open_access: Annotated[
        bool,
        typer.Option(
            "--open",
            help="Anonymous full access, and fetches from loopback: local development and "
            "conformance runs only.",
        ),
    ] = False,
    demo: Annotated[
        bool, typer.Option("--demo", help="Start on a generated, living demo city.")
    ] = False,
    store: Annotated[
        str | None, typer.Option(help="oxigraph (embedded) or sparql (a remote engine).")
    ] = None,
    sparql_url: Annotated[
        str | None, typer.Option(help="Remote engine's query endpoint (--store sparql).")
    ] = None,
    sparql_update_url: Annotated[
        str | None, typer.Option(help="Remote engine's update endpoint (default: query URL).")
    ] = None,
) -> None:
    """Run the NGSI-LD API server."""
    import uvicorn

    from urbis.api.app import create_app
    from urbis.api.http import CONTEXT_REL, limit_headers
    from urbis.api.settings import Settings
    from urbis.twin.errors import ConfigError

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if memory:
        overrides["data_dir"] = None
    if open_access:
        overrides["open"] = True
    if demo:
        overrides["demo"] = True
    for name, value in (
        ("store", store),
        ("sparql_url", sparql_url),
        ("sparql_update_url", sparql_update_url),
    ):
        if value is not None:
            overrides[name] = value
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if settings.open:
        typer.secho(
            "WARNING: --open gives ANYONE who can reach this server full read and write access.",
            fg=typer.colors.RED,
            bold=True,
            err=True,
        )
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.open:
        typer.secho("WARNING: open access on a non-loopback address.", fg="red", err=True)
    where = settings.sparql_url if settings.store == "sparql" else settings.data_dir or "memory"
    base = f"http://{settings.host}:{settings.port}"
    typer.echo(f"Urbis on {base}/ngsi-ld/v1 (twin: {where})")
    if settings.demo:
        link = f'Link: <{base}/ngsi-ld/v1/jsonldContexts/urbis-smart-city>; rel="{CONTEXT_REL}"'
        typer.echo(
            "Try the demo city:\n"
            f"  curl -g '{base}/ngsi-ld/v1/entities?type=WasteContainer&q=fillingLevel>0.8' "
            f"-H '{link}'"
        )
    try:
        app = create_app(settings)
    except ConfigError as error:  # an unknown store backend, a bad admin token...
        typer.secho(f"cannot start: {error.detail}", fg="red", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(
        limit_headers(app, settings.max_header_bytes),
        host=settings.host,
        port=settings.port,
        log_level="info",
        # h11 stops reading a header block above this size; limit_headers catches the rest
        http=settings.http_parser,
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


@app.command()
def load(
    files: Annotated[list[Path], typer.Argument(help="NGSI-LD JSON or JSON-LD entity arrays.")],
    data_dir: DataDir = None,
    dataset: Annotated[str, typer.Option(help="Dataset (named graph) to load into.")] = "default",
    context: Annotated[
        str | None, typer.Option(help="@context URL for entities without an @context member.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Entities per transaction.")] = 1000,
) -> None:
    """Load entity files into an on-disk twin, upserting, in batches."""
    from rich.progress import Progress

    from urbis.api.app import build_state
    from urbis.api.settings import Settings
    from urbis.cli.jsonstream import iter_json_items
    from urbis.twin.changes import WriteContext
    from urbis.twin.errors import NgsiLdError
    from urbis.twin.model import EntityReader
    from urbis.twin.rdf import dataset_graph
    from urbis.twin.store.base import DEFAULT_TENANT

    settings = Settings(open=True) if data_dir is None else Settings(data_dir=data_dir, open=True)
    if settings.data_dir is None:
        typer.secho("load needs --data-dir (or URBIS_DATA_DIR)", fg="red", err=True)
        raise typer.Exit(2)
    state = build_state(settings)
    service = state.twin.tenant(DEFAULT_TENANT, create=True)
    graph = dataset_graph(dataset)
    loader = WriteContext.admin("urbis load")  # whoever can write the data directory
    loaded = failed = 0

    def flush(batch: list[tuple[str | None, Any]]) -> None:
        nonlocal loaded, failed
        result = service.upsert_many(batch, context=loader, mode="replace", graph=graph, bulk=True)
        loaded += len(result.success)
        failed += len(result.errors)
        for entity_id, error in result.errors[:5]:
            typer.secho(f"  rejected {entity_id}: {error.detail}", fg="yellow", err=True)

    with Progress() as progress:
        for path in files:
            task = progress.add_task(path.name, total=None)
            batch: list[tuple[str | None, Any]] = []
            for item in iter_json_items(path):
                entity_id = item.get("id") if isinstance(item, dict) else None
                try:
                    ctx = item.get("@context", context) if isinstance(item, dict) else context
                    doc = EntityReader(state.resolver.resolve(ctx)).entity(item)
                    batch.append((doc["id"], doc))
                except NgsiLdError as error:
                    batch.append((entity_id, error))
                if len(batch) >= batch_size:
                    flush(batch)
                    progress.advance(task, len(batch))
                    batch = []
            if batch:
                flush(batch)
                progress.advance(task, len(batch))
    state.twin.close()
    typer.echo(f"loaded {loaded} entities, rejected {failed}")
    if failed:
        raise typer.Exit(1)


@app.command()
def sparql(
    query: Annotated[str, typer.Argument(help="A SPARQL SELECT, ASK or CONSTRUCT query.")],
    data_dir: DataDir = None,
    tenant: Annotated[str, typer.Option(help="NGSI-LD tenant.")] = "",
) -> None:
    """Run a SPARQL query against an on-disk twin and print the results as TSV or N-Triples."""
    from pyoxigraph import QueryBoolean, QuerySolutions, Store

    from urbis.api.settings import Settings
    from urbis.twin.errors import UrbisError
    from urbis.twin.store.oxigraph import DEFAULT_DIR, OxigraphTenant

    settings = Settings() if data_dir is None else Settings(data_dir=data_dir)
    if settings.data_dir is None:
        typer.secho("sparql needs --data-dir (or URBIS_DATA_DIR)", fg="red", err=True)
        raise typer.Exit(2)
    path = settings.data_dir / "tenants" / (tenant or DEFAULT_DIR)
    if not path.exists():
        typer.secho(f"no twin at {path}", fg="red", err=True)
        raise typer.Exit(2)
    # Read-only, so that it works beside a running server; through the store contract.
    store = OxigraphTenant(Store.read_only(str(path)), path)
    try:
        result = store.sparql(query)
    except UrbisError as exc:
        typer.secho(exc.detail, fg="red", err=True)
        raise typer.Exit(2) from None
    out = sys.stdout
    if isinstance(result, QuerySolutions):
        names = [v.value for v in result.variables]
        out.write("\t".join("?" + n for n in names) + "\n")
        for row in result:
            out.write("\t".join("" if row[n] is None else str(row[n]) for n in names) + "\n")
    elif isinstance(result, QueryBoolean):
        out.write(("true" if bool(result) else "false") + "\n")
    else:
        for triple in result:
            out.write(f"{triple.subject} {triple.predicate} {triple.object} .\n")


# Connector sources (cli/sources.py): `urbis sources add|list|quarantine`, `urbis sync`.
from urbis.cli.sources import sources_app, sync  # noqa: E402

app.add_typer(sources_app, name="sources")
app.command()(sync)

# Export and backup (cli/export.py): `urbis export`, `urbis restore`.
from urbis.cli.export import export, restore  # noqa: E402

app.command("export")(export)
app.command("restore")(restore)

if __name__ == "__main__":
    app()
