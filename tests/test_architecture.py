"""The layout keeps the design (docs/development.md): src/medtune parsed with `ast`, nothing imported. No import circle
between medtune modules (each reported as a path: a -> b -> a); no import from a later stage of the data flow into an
earlier one; no import of training's internals from outside training/; no module over 450 lines and no function over
80, but for the KNOWN_OVER list, which may only shrink. Imports inside functions and under TYPE_CHECKING count like
any other."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "medtune"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 80

# The data flow, one stage a line; a module may import from its own stage and earlier ones. Generation (the one
# decoding path) comes before evaluation, which decodes its answers through it; exports and serving come after both.
STAGES = [
    # config: declarations, the one validation step, what every command uses (no ML stack)
    "errors console files notice hub stopping config machine validate serving.limits",
    # data: records, chat records, PHI, n-gram overlap; batches of tokenized records (training and evaluation)
    "data chat phi phi.detect phi.names phi.patterns phi.guard audit_overlap batching",
    # model: the run folder's names and metadata; tokenizer, base model (a .gguf file too) and a run's model, loaded
    # in model.py alone; the audit (a tokenizer, a folder); the chunked answer-token loss and its curve
    "rundir gguf_load model audit loss",
    # training: the recipe and its parts
    "training training.entry training.train training.trainer training.progress training.attention training.patches "
    "training.memory training.distributed training.artifacts training.trackers training.compiling",
    # generation: the one decoding path
    "generate decoding decoding.engine decoding.request decoding.rows decoding.scheduler decoding.runner "
    "decoding.kvcache decoding.sampling decoding.fused",
    # evaluation
    "evaluate evalstats evalcache report medbench medbench.tasks medbench.scoring",
    # what a tuned model becomes: a merged folder, GGUF, a server
    "merge modelcard deploy gguf_export gguf_export.arch gguf_export.common gguf_export.ollama gguf_export.vocab "
    "gguf_export.writer serving serving.app serving.engine serving.middleware serving.replies serving.schemas "
    "serving.server serving.worker",
    # the command line
    "cli cli_args env __main__",
]

# (module or module:function, its size in lines today): each must shrink under its limit and leave this list
KNOWN_OVER = {
    "data": 593,
    "evaluate": 530,
}


def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = modules()


def _resolve(name: str) -> str | None:
    """The medtune module (or package) that an imported dotted name lives in, relative to medtune."""
    name = name.removeprefix("medtune").removeprefix(".")
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {_resolve(a.name) for a in node.names if a.name.split(".")[0] == "medtune"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join(["medtune", *[p for p in up if p], *([base] if base else [])])
            if base.split(".")[0] == "medtune":
                found |= {_resolve(f"{base}.{a.name}") for a in node.names}
    return {m for m in found if m is not None and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_has_a_stage():
    staged = {m for line in STAGES for m in line.split()}
    assert set(MODULES) - {""} <= staged, f"give these a stage in STAGES: {sorted(set(MODULES) - staged - {''})}"
    assert staged <= set(MODULES), f"no such modules: {sorted(staged - set(MODULES))}"


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import circle per strongly connected component of `graph` (Tarjan), as a path that ends where it starts
    (["a", "b", "a"]: a imports b, b imports a)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_path_round(graph, component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path_round(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest circle through the component's first module, by breadth-first search inside the component."""
    start = min(component)
    parent: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, set()) & component):
                if w == start:
                    path: list[str] = []
                    at: str | None = v
                    while at is not None:
                        path.append(at)
                        at = parent[at]
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle in {sorted(component)}")


def test_the_circle_finder_names_each_circle_as_a_path():
    graph = {"config": {"validate"}, "validate": {"model"}, "model": {"validate", "errors"}, "errors": set()}
    assert circles(graph) == [["model", "validate", "model"]]
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}}
    assert circles(graph) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    found = circles(GRAPH)
    assert not found, "import circles (each module imports the next):\n" + "\n".join(" -> ".join(c) for c in found)


def test_imports_follow_the_data_flow():
    stage = {m: i for i, line in enumerate(STAGES) for m in line.split()}
    stage[""] = 0  # the package itself (its version)
    against = [
        f"{m} (stage {stage[m]}) imports {d} (stage {stage[d]})"
        for m, deps in GRAPH.items()
        for d in deps
        if m in stage and d in stage and stage[d] > stage[m]
    ]
    assert not against, "imports against the data flow:\n" + "\n".join(sorted(against))


def test_training_internals_stay_inside():
    """Outside training/, the package's front door (training.run) only: what training shares with other stages
    (batching, the chunked loss) lives in an earlier stage."""
    inside = [
        f"{m} imports {d}"
        for m, deps in GRAPH.items()
        for d in deps
        if d.startswith("training.") and not (m == "training" or m.startswith("training."))
    ]
    assert not inside, "training internals imported from outside training/:\n" + "\n".join(sorted(inside))


def sizes() -> dict[str, int]:
    over = {}
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            over[module] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    over[f"{module}:{node.name}"] = length
    return over


@pytest.mark.parametrize("name", sorted(set(sizes()) | set(KNOWN_OVER)))
def test_modules_and_functions_fit(name):
    now = sizes().get(name)
    assert name in KNOWN_OVER, f"{name} is {now} lines: split it (modules <= 450, functions <= 80)"
    assert now is not None, f"{name} fits now: remove it from KNOWN_OVER"
    assert now <= KNOWN_OVER[name], f"{name} grew from {KNOWN_OVER[name]} to {now} lines"
