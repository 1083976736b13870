"""One root error type: every error class carries its status and type, the API renders them
through one class-to-status table a deployer can override, and routes define no errors."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import urbis
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.connectors.errors import ConnectorError
from urbis.twin.errors import (
    BadRequestData,
    ConfigError,
    NgsiLdError,
    ResourceNotFound,
    SparqlError,
    StateError,
    Unauthorized,
    UrbisError,
)

ROUTES = Path(urbis.__file__).parent / "api" / "routes"
TOKEN = "errors-token"


def urbis_modules() -> Iterator[str]:
    for info in pkgutil.walk_packages(urbis.__path__, "urbis."):
        if not info.name.endswith(".__main__"):  # runs the command line when imported
            yield info.name


def exception_classes() -> list[type[BaseException]]:
    """Every public exception class the package defines (private ones are control flow that
    never leaves its module)."""
    found: dict[str, type[BaseException]] = {}
    for name in urbis_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not value.__name__.startswith("_")
            ):
                found[f"{name}.{value.__qualname__}"] = value
    return list(found.values())


def test_every_error_class_has_a_status_and_a_type() -> None:
    classes = exception_classes()
    assert len(classes) > 30  # the walk found the package's errors
    wrong = []
    for cls in classes:
        if not issubclass(cls, UrbisError):
            wrong.append(f"{cls.__module__}.{cls.__name__}: not an UrbisError")
            continue
        status, type_uri, title = cls.status, cls.type_base + cls.error_type, cls.title
        if not (isinstance(status, int) and 400 <= status <= 599):
            wrong.append(f"{cls.__name__}: status {status!r}")
        if not type_uri.startswith("https://") or type_uri.endswith("/"):
            wrong.append(f"{cls.__name__}: type {type_uri!r}")
        if not title:
            wrong.append(f"{cls.__name__}: no title")
    assert not wrong, "\n".join(wrong)


def test_the_families_cover_the_packages() -> None:
    families = {NgsiLdError, SparqlError, ConfigError, ConnectorError, StateError}
    for cls in exception_classes():
        assert issubclass(cls, UrbisError)
        if cls is UrbisError:
            continue
        in_family = any(issubclass(cls, family) for family in families)
        assert in_family or cls.__name__ == "OutboundRefused", cls  # the guard's own


def test_no_route_module_defines_an_exception_class() -> None:
    offenders = []
    for path in sorted(ROUTES.glob("*.py")):
        module = importlib.import_module(f"urbis.api.routes.{path.stem}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                defined = getattr(module, node.name, None)
                if inspect.isclass(defined) and issubclass(defined, BaseException):
                    offenders.append(f"{path.name}: {node.name}")
    assert not offenders, offenders


def test_an_error_renders_its_class_attributes_and_a_user_safe_detail() -> None:
    error = ResourceNotFound("entity 'urn:x' not found", extra_member=1)
    assert error.problem() == {
        "type": "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound",
        "title": "Resource not found",
        "detail": "entity 'urn:x' not found",
        "extra_member": 1,
    }
    assert str(error) == error.detail


# -- the status table ------------------------------------------------------------------------


def app_with(statuses: dict[type[UrbisError], int] | None) -> TestClient:
    settings = Settings(admin_token=TOKEN, demo=False)
    return TestClient(create_app(settings, statuses=statuses))


def test_overriding_the_table_changes_the_rendered_status() -> None:
    with app_with(None) as client:
        missing = client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:T:none")
    assert missing.status_code == 404
    with app_with({ResourceNotFound: 410}) as client:
        gone = client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:T:none")
        bad = client.get("/ngsi-ld/v1/entities/not an id")
    assert gone.status_code == 410
    assert gone.headers["content-type"] == "application/problem+json"
    assert gone.json() == missing.json()  # type, title and detail do not change
    assert bad.status_code == 400  # classes the table does not list keep their own


def test_a_family_entry_covers_its_members_and_the_most_specific_wins() -> None:
    with app_with({NgsiLdError: 418, BadRequestData: 422}) as client:
        missing = client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:T:none")
        bad = client.get("/ngsi-ld/v1/entities/not an id")
        # /sparql answers its problems itself (CORS headers): through the same table
        sparql = client.get("/sparql", params={"query": "SELEC nothing"})
    assert missing.status_code == 418
    assert bad.status_code == 422
    assert sparql.status_code == 422
    assert sparql.headers["access-control-allow-origin"] == "*"
    assert sparql.json()["type"].endswith("/BadRequestData")


def test_a_remapped_401_loses_its_challenge_and_a_kept_one_has_it() -> None:
    body = {"id": "urn:ngsi-ld:T:1", "type": "T"}
    with app_with(None) as client:
        refused = client.post("/ngsi-ld/v1/entities", json=body)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    with app_with({Unauthorized: 404}) as client:
        hidden = client.post("/ngsi-ld/v1/entities", json=body)
    assert hidden.status_code == 404 and "www-authenticate" not in hidden.headers
    assert hidden.json()["type"].endswith("/Unauthorized")


@pytest.mark.parametrize(
    "table",
    [{ResourceNotFound: 200}, {ResourceNotFound: "404"}, {ValueError: 400}],
    ids=["not-an-error-status", "not-an-int", "not-an-urbis-error"],
)
def test_a_wrong_table_is_refused_at_start(table: dict[type[UrbisError], int]) -> None:
    with pytest.raises(ConfigError, match="error status table"):
        create_app(Settings(admin_token=TOKEN, demo=False), statuses=table)
