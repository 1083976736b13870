"""The package layout holds: every import edge is one `docs/layout.md` allows."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "urbis"


def allowed_edges() -> dict[str, set[str]]:
    """The `layers` block of docs/layout.md: `package: what it may import`."""
    text = (ROOT / "docs" / "layout.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/layout.md has no ```layers block"
    table: dict[str, set[str]] = {}
    for line in block.group(1).strip().splitlines():
        name, _, targets = line.partition(":")
        table[name.strip()] = set(targets.split())
    return table


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module `path` imports, at any depth (functions, branches), made absolute."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[: len(base) - node.level + (path.name == "__init__.py")]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
                # `from urbis import ontology` imports urbis.ontology: name the submodules too
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "urbis":
        return None
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else "urbis"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_package_is_in_the_table() -> None:
    table = allowed_edges()
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages | {"urbis"} == set(table), "docs/layout.md and src/urbis/ disagree"


def test_imports_follow_the_layers() -> None:
    table = allowed_edges()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        source = package_of(module)
        assert source is not None
        may = table[source]
        for target in sorted(imported_modules(path, module)):
            into = package_of(target)
            if into is None or into == source or "*" in may:
                continue
            if into == "urbis" and target == "urbis":
                continue  # the root package's docstring and version
            if into not in may:
                wrong.append(f"{path.relative_to(ROOT)}: {source} -> {target}")
    assert not wrong, "imports that docs/layout.md does not allow:\n" + "\n".join(wrong)


def test_no_product_module_imports_the_test_support() -> None:
    users = [
        f"{path.relative_to(ROOT)} -> {target}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if package_of(module_name(path)) != "testing"
        for target in imported_modules(path, module_name(path))
        if target.startswith("urbis.testing")
    ]
    assert not users, users


def test_bench_and_tests_never_import_each_other() -> None:
    edges = []
    for folder, other in (("bench", "tests"), ("tests", "bench")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for target in imported_modules(path, ".".join(path.relative_to(ROOT).parts)[:-3]):
                if target.split(".")[0] == other:
                    edges.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not edges, edges


def test_the_walker_sees_imports_inside_functions(tmp_path: Path) -> None:
    """A guard for the guard: a late import in a function body is an edge too."""
    sample = tmp_path / "late.py"
    sample.write_text("def f():\n    if True:\n        from urbis.api import app\n")
    assert "urbis.api" in imported_modules(sample, "urbis.twin.late")


def test_the_package_never_imports_tests_or_bench() -> None:
    """`urbis.testing` is what tests and benchmarks share; it cannot lean on either."""
    edges = [
        f"{path.relative_to(ROOT)} -> {target}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for target in imported_modules(path, module_name(path))
        if target.split(".")[0] in ("tests", "bench")
    ]
    assert not edges, edges
