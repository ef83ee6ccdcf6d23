"""The layers' import rules, read from the source with `ast` (nothing is imported).

Imports flow one way: modules.core <- modules.services <- the adapters (A1111's names, the UI, the
API) <- webui.py (ARCHITECTURE.md). Every import counts, also one inside a function: an import
made "late, at call time" still ties the two modules together. Only the imports under
`if TYPE_CHECKING:` are left out of the cycle check (they never run), not out of the layer rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Imports of a service from outside the core and the services that are allowed, with the reason.
# Keep it empty: a service gets what it needs from webui.py (see Engine.script_host).
SERVICE_EXCEPTIONS: dict[tuple[str, str], str] = {}

# The modules whose import graph must have no cycle: the two inner layers, the installer modules
# and A1111's processing facade with the version both read.
CYCLE_CHECKED_PREFIXES = ("modules.core.", "modules.services.")
CYCLE_CHECKED = {"modules.launch_utils", "modules.extension_install", "modules.installer", "modules.processing",
                 "modules.core.version", "modules.script_host"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    files = {module_name(path): path for path in sorted((REPO / "modules").rglob("*.py"))}
    for name in ("webui.py", "launch.py"):
        files[module_name(REPO / name)] = REPO / name
    return files


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` (or `if typing.TYPE_CHECKING:`) bodies."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                for statement in node.body:
                    inside.update(id(child) for child in ast.walk(statement))
    return inside


def imports_of(name: str, path: Path, known: set[str]) -> dict[str, bool]:
    """Every module `name` imports, anywhere in the file (relative imports resolved; `from a import b`
    is a.b when that is a module here), -> whether it is only imported under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf8"), filename=str(path))
    type_only_nodes = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, bool] = {}

    def add(target: str, node: ast.AST) -> None:
        type_only = id(node) in type_only_nodes
        found[target] = found.get(target, True) and type_only

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                add(candidate if candidate in known else base, node)
    return found


FILES = source_files()
IMPORTS = {name: imports_of(name, path, set(FILES)) for name, path in FILES.items()}


def own_imports(name: str, runtime_only: bool = False) -> set[str]:
    """The modules of this repository (modules.*, webui, launch) that `name` imports."""
    return {target for target, type_only in IMPORTS[name].items()
            if (target == "modules" or target.startswith("modules.") or target in ("webui", "launch"))
            and not (runtime_only and type_only)}


def is_core(name: str) -> bool:
    return name == "modules.core" or name.startswith("modules.core.")


def is_service(name: str) -> bool:
    return name == "modules.services" or name.startswith("modules.services.")


def strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the cycles, as the groups of modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in nodes:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1 or node in edges.get(node, ()):
                        groups.append(sorted(group))
    return groups


def runtime_edges() -> dict[str, set[str]]:
    return {name: own_imports(name, runtime_only=True) for name in IMPORTS}


def reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_sources_are_found():
    for name in ("modules.core.pipeline", "modules.services.engine", "modules.processing", "modules.launch_utils",
                 "modules.installer", "modules.extension_install", "webui", "launch"):
        assert name in FILES
    # relative imports are resolved: the engine's `from .checkpoints import ...`
    assert "modules.services.checkpoints" in own_imports("modules.services.engine")


def test_imports_inside_functions_are_seen(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from modules import shared\n    from . import sibling\n", encoding="utf8")
    found = imports_of("modules.core.sample", sample, {"modules.shared", "modules.core.sibling"})
    assert found == {"modules.shared": False, "modules.core.sibling": False}


def test_core_imports_only_core():
    wrong = {f"{name} imports {target}" for name in IMPORTS if is_core(name)
             for target in own_imports(name) if not is_core(target)}
    assert not wrong, "modules.core must stay pure (everything comes in as arguments):\n" + "\n".join(sorted(wrong))


def test_services_import_only_core_and_services():
    wrong = {f"{name} imports {target}" for name in IMPORTS if is_service(name)
             for target in own_imports(name)
             if not (is_core(target) or is_service(target)) and (name, target) not in SERVICE_EXCEPTIONS}
    assert not wrong, ("modules.services may import only modules.core and modules.services; what they need from "
                       "the adapters comes from webui.py:\n" + "\n".join(sorted(wrong)))


def test_no_import_cycles_in_the_inner_layers_and_installer():
    edges = runtime_edges()
    nodes = {name for name in IMPORTS if name.startswith(CYCLE_CHECKED_PREFIXES) or name in CYCLE_CHECKED}
    cycles = strongly_connected(nodes, edges)
    assert not cycles, "import cycles (each line: modules that import each other, directly or not):\n" + \
        "\n".join(", ".join(group) for group in cycles)


# ---- the three loops of issue 19, by name ----------------------------------------------------------

def test_no_loop_between_core_pipeline_and_hires():
    # hires used to import pipeline back for the model operations both use (now shared modules)
    edges = runtime_edges()
    hires_reaches_pipeline = "modules.core.pipeline" in reachable("modules.core.hires", edges)
    pipeline_reaches_hires = "modules.core.hires" in reachable("modules.core.pipeline", edges)
    assert not (hires_reaches_pipeline and pipeline_reaches_hires), \
        "modules.core.pipeline and modules.core.hires import each other (directly or through other modules)"


def test_no_loop_script_jobs_processing_engine():
    edges = runtime_edges()
    assert "modules.processing" not in own_imports("modules.services.script_jobs")
    assert "modules.services.engine" not in own_imports("modules.processing")
    for service in (name for name in IMPORTS if is_service(name)):
        assert "modules.processing" not in reachable(service, edges), f"{service} reaches modules.processing"
    assert "modules.services.engine" not in reachable("modules.processing", edges)


def test_no_loop_extension_install_launch_utils():
    edges = runtime_edges()
    assert "modules.launch_utils" not in reachable("modules.extension_install", edges)
    assert "modules.launch_utils" not in reachable("modules.installer", edges)


# ---- what moved keeps its old names ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["python", "git", "index_url", "dir_repos", "run", "run_pip", "run_python",
                                  "is_installed", "requirements_met", "git_clone", "repo_dir", "commit_hash",
                                  "git_tag", "run_extension_installer", "run_extensions_installers",
                                  "prepare_environment", "start", "install_extension", "install_requirements"])
def test_launch_names_still_work(name):
    import launch
    from modules import launch_utils

    assert getattr(launch_utils, name) is not None
    if hasattr(launch, name) or name not in ("install_extension", "install_requirements"):
        assert getattr(launch, name) is getattr(launch_utils, name)


def test_version_is_one_string_everywhere():
    from modules import processing
    from modules.core.version import VERSION
    from modules.services import engine

    assert engine.VERSION == VERSION == processing.program_version()
