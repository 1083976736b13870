"""Every write goes through EntityService: nothing outside `urbis.twin` reaches into a
service's store, and nothing outside the twin (and the offline restore) applies quads.

Read from the AST of every module of the product. What names an EntityService: a name or
attribute that says `service` (`service`, `self.service`, `self.sink.service`), a call of
`.tenant(...)` (`state.twin.tenant(name)`), and any variable the module assigns from such a
call or annotates as `EntityService`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "urbis"

# Reads through `service.store` that the access-policy port will take over: shrink this list,
# never grow it (a new read path gets an EntityService method instead).
STORE_READERS: set[str] = set()  # none left: SPARQL, dumps and aggregates are service reads
# Quads applied straight to a store: the twin itself, and `urbis restore` (an offline load of
# a dump into a fresh store, where no entity service is running).
APPLIERS = {"cli/export.py"}


def service_expression(node: ast.expr, services: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return "service" in node.id.lower() or node.id in services
    if isinstance(node, ast.Attribute):
        return "service" in node.attr.lower()
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr == "tenant"
    return False


def service_names(tree: ast.AST) -> set[str]:
    """Variables bound to a service: `x = twin.tenant(...)`, `x: EntityService`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and service_expression(node.value, set()):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign | ast.arg):
            annotation = node.annotation
            target = node.target if isinstance(node, ast.AnnAssign) else None
            name = node.arg if isinstance(node, ast.arg) else None
            if annotation is not None and "EntityService" in ast.unparse(annotation):
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif name is not None:
                    names.add(name)
    return names


def offences(source: str, where: str) -> tuple[list[str], list[str]]:
    """(`<service>.store` uses, `.apply(` calls) of one module, as `where:line: code`."""
    tree = ast.parse(source)
    services = service_names(tree)
    stores, applies = [], []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "store"
            and service_expression(node.value, services)
        ):
            stores.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "apply"
        ):
            applies.append(f"{where}:{node.lineno}: {ast.unparse(node.func)}")
    return stores, applies


def product_modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith("twin/"):
            out.append((relative, path))
    return out


def test_the_detector_finds_what_it_must() -> None:
    stores, applies = offences(
        "def f(service, twin, s: EntityService):\n"
        "    service.store.apply([], [])\n"
        "    self.sink.service.store.documents([])\n"
        "    twin.tenant('').store.select('')\n"
        "    found = twin.tenant('x')\n"
        "    found.store.graphs()\n"
        "    s.store.dump()\n"
        "    notifier.store.add('', None)\n",  # a subscription store: not a service's
        "example.py",
    )
    assert [line.split(":")[1] for line in stores] == ["2", "3", "4", "6", "7"]
    assert applies == ["example.py:2: service.store.apply"]


def test_nothing_outside_the_twin_reaches_into_a_services_store() -> None:
    found = []
    for relative, path in product_modules():
        stores, _ = offences(path.read_text(), relative)
        if relative not in STORE_READERS:
            found.extend(stores)
    assert not found, "use an EntityService method:\n" + "\n".join(found)


def test_the_exceptions_are_still_needed() -> None:
    """An exception that no longer reads the store must leave the list (it only shrinks)."""
    for relative in STORE_READERS:
        stores, _ = offences((PACKAGE / relative).read_text(), relative)
        assert stores, f"{relative} no longer reads service.store: remove it from STORE_READERS"


def test_no_quads_are_applied_outside_the_twin_and_the_restore() -> None:
    found = []
    for relative, path in product_modules():
        _, applies = offences(path.read_text(), relative)
        if relative not in APPLIERS:
            found.extend(applies)
    assert not found, "write through EntityService:\n" + "\n".join(found)
