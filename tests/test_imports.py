"""The import graph of the project's modules (ambient/, kernels/, bench/, the top-level scripts) has no circles, the
sub-packages of ambient/ import only downward (docs/design.md, "Layout"), and the trainer uses kernels/ only through
its package.

Read from the source with `ast`, so nothing is imported: every `import` and `from ... import` counts, those inside
functions too (a circle a lazy import hides still ties the two modules together).
"""
import ast
from pathlib import Path

import torch

import kernels

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ambient", "kernels", "bench")
# The layers of ambient/, lowest first: a sub-package imports only from lower layers (and kernels); the modules
# beside the packages (command lines, public paths) sit above them all and nothing in a package imports them.
LAYERS = {"ambient.common": 0, "ambient.data": 1, "ambient.model": 1, "ambient.io": 2, "ambient.train": 3,
          "ambient.eval": 3, "ambient.study": 4}


def module_name(path: Path, root: Path) -> str:
    """"kernels.loss" for root/kernels/loss.py, "kernels" for root/kernels/__init__.py."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for the packages and the top-level scripts under `root`."""
    files = [*root.glob("*.py"), *(f for package in PACKAGES for f in (root / package).rglob("*.py"))]
    return {module_name(f, root): f for f in files}


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module `name` (at `path`) imports, at module level or inside functions.

    `from P import x` depends on module P.x when there is one, else on P (a name defined in P); a package's
    parent is not counted (Python imports it first whatever the module does).
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def known(target: str) -> str | None:
        """The longest project module `target` starts with."""
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {known(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else known(base) for a in node.names}
    return found - {None, name}


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per back edge of a depth-first search, each as [a, b, ..., a]; none for an acyclic graph."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_graph_reads_imports_of_every_kind(tmp_path):
    files = {"pkg/__init__.py": "from .a import f\n", "pkg/a.py": "import pkg.b\ndef f():\n    from . import c\n",
             "pkg/b.py": "from pkg.c import g as h\n", "pkg/c.py": "import os\ng = 1\n",
             "script.py": "from pkg import f\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = {module_name(tmp_path / f, tmp_path): tmp_path / f for f in files}
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b", "pkg.c"}, "pkg.b": {"pkg.c"}, "pkg.c": set(),
                     "script": {"pkg"}}
    assert circles(graph) == []
    graph["pkg.c"] = {"pkg.a"}
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_no_import_circles():
    graph = import_graph(REPO)
    assert {"kernels.loss", "bench.run", "ambient.train.step"} <= graph.keys()
    found = circles(graph)
    assert not found, "import circles:\n" + "\n".join(" -> ".join(circle) for circle in found)


def layer(module: str) -> str | None:
    """The sub-package of ambient/ that `module` belongs to (None: a module beside them, or outside ambient/)."""
    return next((p for p in LAYERS if module == p or module.startswith(p + ".")), None)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Edges "a -> b" from a sub-package of ambient/ to one of the same or a higher layer (other than its own), or
    to a module beside the packages; and from kernels/ into ambient/."""
    found = []
    for name, deps in graph.items():
        if name.startswith("kernels"):
            found += [f"{name} -> {d}" for d in deps if d.startswith("ambient")]
        if (mine := layer(name)) is None:
            continue
        for dep in deps:
            theirs = layer(dep)
            if theirs == mine or dep.startswith("kernels"):
                continue
            if theirs is None or LAYERS[theirs] >= LAYERS[mine]:
                found.append(f"{name} -> {dep}")
    return sorted(found)


def test_the_layers_import_only_downward():
    graph = import_graph(REPO)
    assert {layer(name) for name in graph} >= set(LAYERS)         # every layer exists
    assert not [n for n in graph if n.startswith("ambient.") and layer(n) is None and n.count(".") > 1]
    upward = upward_imports(graph)
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_layer_check_catches_upward_and_sideways_imports():
    graph = {"ambient.data.a": {"ambient.common.x", "kernels"}, "ambient.model.b": {"ambient.common.x"},
             "ambient.train.c": {"ambient.data.a", "ambient.model.b"}, "ambient.sample": {"ambient.train.c"}}
    assert upward_imports(graph) == []
    graph["ambient.data.a"] |= {"ambient.model.b"}                 # sideways: data and model are one layer
    graph["ambient.model.b"] |= {"ambient.train.c", "ambient.sample"}   # upward, and to a command line
    graph["kernels.k"] = {"ambient.model.b"}
    assert upward_imports(graph) == ["ambient.data.a -> ambient.model.b", "ambient.model.b -> ambient.sample",
                                     "ambient.model.b -> ambient.train.c", "kernels.k -> ambient.model.b"]


def test_the_trainer_uses_kernels_only_through_its_package():
    """ambient/ and the scripts import `kernels`, never one of its modules (bench/ looks inside on purpose)."""
    graph = import_graph(REPO)
    inside = sorted(f"{name} -> {dep}" for name, deps in graph.items() if not name.startswith(("kernels", "bench"))
                    for dep in deps if dep.startswith("kernels."))
    assert not inside, inside


def test_resolve_backend_takes_a_tensor_or_a_device():
    for where in (torch.empty(0), torch.device("cpu"), "cpu"):
        assert kernels.resolve_backend("auto", where) == "torch"
    assert kernels.resolve_backend("auto", "cuda") == "triton"
    assert kernels.resolve_backend("xformers", torch.device("cuda", 1)) == "triton"   # as "auto" for this op
    assert kernels.resolve_backend("torch", "cuda") == "torch"
