"""docs/ARCHITECTURE.md against the package, and the "Introduced in notebooks/..." references.

Everything here reads files (Markdown, Python through ``ast``, notebook JSON); nothing imports
``mlnb``, so these tests take well under a second and never run a kernel.

* The "## Modules" table has one row for every module of the package (``mlnb/*.py`` and the modules of
  its subpackages, named by their path under ``mlnb/``: ``attacks/ml_cw.py``; a subpackage's
  ``__init__.py`` counts when it defines something), names no module that does not exist, and every
  name it puts in backticks exists in its row's module.
* Every module over 300 lines is listed in "## Conventions" as ``- `name.py` (N lines): reason``,
  with ``N`` within 10 of the real count.
* Every notebook named in ``mlnb/`` exists, and the notebook that a public function's or class's
  docstring says introduces it uses it (or its module); a module's notebook uses the module or a
  module that imports it.
"""
from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mlnb"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
NOTEBOOKS = ROOT / "notebooks"

MAX_LINES = 300  # the "small and flat" limit of the Conventions section
LINE_SLACK = 10  # how far a documented line count may drift before the test asks for an update
FILE_SUFFIXES = {"py", "csv", "png", "svg", "json", "jsonl", "html", "ipynb", "md", "txt"}

# Wrong "Introduced in" references allowed for now. Key: (module, function or class, or "" for the
# module docstring) -> the notebook that should be named; fix the docstring, then drop the entry.
# Empty: every reference checked here is right today.
KNOWN_WRONG: dict[tuple[str, str], str] = {}

IDENT = re.compile(r"[A-Za-z_]\w*")
INTRODUCED = re.compile(r"Introduced in\s+((?:[^.]|\.ipynb)+)")  # up to the end of the sentence
NOTEBOOK_NAME = re.compile(r"\d\d_\w+\.ipynb")


# ----------------------------------------------------------------------------- reading the sources
def _defines_something(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(n, ast.Expr) and isinstance(getattr(n, "value", None), ast.Constant)) for n in body)


@cache
def modules() -> dict[str, Path]:
    """``{key: path}`` of every module of the package: the key is the path under ``mlnb/`` without
    ``.py`` (``"metrics"``, ``"attacks/ml_cw"``, ``"attacks/__init__"``); the package's own
    ``__init__.py`` and a subpackage ``__init__.py`` holding only a docstring are left out."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        key = p.relative_to(PKG).with_suffix("").as_posix()
        if key == "__init__" or (p.name == "__init__.py" and not _defines_something(p)):
            continue
        out[key] = p
    return out


def dotted(module: str) -> str:
    """``"attacks/__init__"`` -> ``"attacks"``, ``"attacks/losses"`` -> ``"attacks.losses"``."""
    return module.removesuffix("/__init__").replace("/", ".")


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The package modules a relative ``from ... import ...`` of ``module`` names."""
    base = module.split("/")[:-1]  # the package its relative imports start from
    if node.level - 1 > len(base):
        return []
    base = base[:len(base) - (node.level - 1)]
    known = modules()
    if node.module:
        path = "/".join([*base, *node.module.split(".")])
        return [k for k in (path, path + "/__init__") if k in known]
    return [k for a in node.names for k in ("/".join([*base, a.name]), "/".join([*base, a.name, "__init__"]))
            if k in known]


@cache
def tree(module: str) -> ast.Module:
    return ast.parse(modules()[module].read_text(encoding="utf-8"))


def n_lines(module: str) -> int:
    return len(modules()[module].read_text(encoding="utf-8").splitlines())


@cache
def bound_names(module: str) -> frozenset[str]:
    """Every name bound at the module's top level (definitions, assignments, imports), including
    inside top-level ``if`` / ``try`` / ``with`` blocks: what ``getattr(mlnb.<module>, name)`` finds."""
    names: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    visit(getattr(node, field, []) or [])

    visit(tree(module).body)
    return frozenset(names)


@cache
def importers(module: str) -> frozenset[str]:
    """The package's modules that import ``module`` (``from .m import x``, ``from . import m``,
    ``from ..m import x`` inside a subpackage), directly."""
    out = set()
    for other in modules():
        for node in ast.walk(tree(other)):
            if isinstance(node, ast.ImportFrom) and node.level >= 1 and module in _resolve(other, node):
                out.add(other)
    return frozenset(out - {module})


@cache
def reachers(module: str) -> frozenset[str]:
    """The modules that import ``module`` directly or through others (``attacks`` reaches ``attacks/_state``)."""
    seen, todo = set(), [module]
    while todo:
        for m in importers(todo.pop()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return frozenset(seen - {module})


@cache
def notebook_code(name: str) -> str:
    """The code cells of ``notebooks/<name>`` joined (markdown cells do not count as use)."""
    nb = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def introduced_in(doc: str | None) -> list[str]:
    """The notebook file names of every "Introduced in ..." sentence of ``doc``."""
    return [nb for m in INTRODUCED.finditer(doc or "") for nb in NOTEBOOK_NAME.findall(m.group(1))]


def uses(code: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}\b", code) is not None


def uses_module(code: str, module: str) -> bool:
    name = re.escape(dotted(module))
    head, _, last = dotted(module).rpartition(".")
    from_parent = head and re.search(rf"\bfrom mlnb\.{re.escape(head)} import [^\n]*\b{re.escape(last)}\b", code)
    return bool(re.search(rf"\bmlnb\.{name}\b|\bfrom mlnb import [^\n]*\b{name}\b", code) or from_parent)


# ----------------------------------------------------------------------------- reading ARCHITECTURE.md
def section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(title)}\b[^\n]*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"docs/ARCHITECTURE.md has no '## {title}' section"
    return m.group(1)


def table_rows() -> list[tuple[list[str], str]]:
    """``[(modules named in the first cell, text of the second cell)]`` of the Modules table."""
    rows = []
    for line in section("Modules").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "module" or set(cells[0]) <= set("-: "):
            continue  # header and separator
        rows.append((re.findall(r"`([^`]+)`", cells[0]), " | ".join(cells[1:])))
    assert rows, "the Modules table of docs/ARCHITECTURE.md has no rows"
    return rows


def referenced_names(token: str) -> list[tuple[str | None, str]]:
    """The ``(module or None for the row's own modules, name)`` pairs a backticked token refers to.

    ``name`` and ``name(args...)`` -> the name; ``a, b, c`` -> each; ``mod.name`` / ``mlnb.mod.name``
    with ``mod`` a package module -> that module's name; ``mod.py`` -> the module itself
    (``(mod, "")``). Anything else (paths, commands, other packages, prose) is not checked.
    """
    token = token.strip()
    if token == "mlnb":  # the package itself, as in "`mlnb`'s forms"
        return []
    call = re.fullmatch(r"([A-Za-z_]\w*)\(.*\)", token)
    if call:
        return [(None, call.group(1))]
    if "," in token:
        parts = [p.strip() for p in token.split(",")]
        return [(None, p) for p in parts] if all(IDENT.fullmatch(p) for p in parts) else []
    if IDENT.fullmatch(token):
        return [(None, token)]
    parts = token.removeprefix("mlnb.").split(".")
    if len(parts) == 2 and parts[1] == "py":
        return [(parts[0], "")]
    if len(parts) == 2 and parts[0] in modules() and IDENT.fullmatch(parts[1]) and parts[1] not in FILE_SUFFIXES:
        return [(parts[0], parts[1])]
    return []


# ----------------------------------------------------------------------------- the Modules table
def test_modules_table_lists_every_module_and_only_existing_ones():
    rows = table_rows()
    named = [tok for cells, _ in rows for tok in cells]
    bad = [tok for tok in named if not re.fullmatch(r"[\w/]+\.py", tok)]
    assert not bad, f"first cells of the Modules table must name modules as `name.py` or `package/name.py`: {bad}"
    stems = [tok[:-3] for tok in named]
    missing = sorted(set(modules()) - set(stems))
    unknown = sorted(set(stems) - set(modules()))
    twice = sorted({s for s in stems if stems.count(s) > 1})
    assert not missing, f"modules without a row in docs/ARCHITECTURE.md's Modules table: {missing}"
    assert not unknown, f"the Modules table names modules that do not exist in mlnb/: {unknown}"
    assert not twice, f"modules with more than one row in the Modules table: {twice}"


def test_modules_table_names_exist_in_their_module():
    problems = []
    for cells, owns in table_rows():
        own = [c[:-3] for c in cells if c[:-3] in modules()]
        for token in re.findall(r"`([^`]+)`", owns):
            for module, name in referenced_names(token):
                if module is not None and not name:  # `mod.py`
                    if module not in modules():
                        problems.append(f"{cells}: `{token}` is not a module of mlnb/")
                    continue
                where = [module] if module is not None else own
                if module is not None and module not in modules():
                    problems.append(f"{cells}: `{token}`: no module {module}.py")
                elif not any(name in bound_names(m) for m in where):
                    files = ", ".join(f"{w}.py" for w in where)
                    problems.append(f"{cells}: `{token}`: {name} is not defined in {files}")
    assert not problems, "names in the Modules table that the package does not have:\n" + "\n".join(problems)


def test_referenced_names_parser():
    assert referenced_names("check_images") == [(None, "check_images")]
    assert referenced_names("load_dataset(name, split, n_examples=None)") == [(None, "load_dataset")]
    assert referenced_names("fgs, fg, ml_cw") == [(None, "fgs"), (None, "fg"), (None, "ml_cw")]
    assert referenced_names("presets.ROW_NAMES") == [("presets", "ROW_NAMES")]
    assert referenced_names("attacks/_core.py") == [("attacks/_core", "")]
    for skipped in ("python -m mlnb.experiments", "data/", "docs/results-default.json", "sweep.csv",
                    "torchvision.datasets.VOCDetection", "animal-shape-mnist", "±1", "mlnb"):
        assert referenced_names(skipped) == [], skipped


# ----------------------------------------------------------------------------- long modules
def documented_lengths() -> dict[str, tuple[int, str]]:
    """``{module: (documented line count, reason)}`` from "- `name.py` (N lines): reason" entries."""
    pattern = re.compile(r"^\s*-\s+`([\w/]+)\.py`\s+\((\d+)(?: lines)?\):\s*(.+?)(?=^\s*-\s|^\S|\Z)", re.M | re.S)
    return {m.group(1): (int(m.group(2)), " ".join(m.group(3).split()))
            for m in pattern.finditer(section("Conventions"))}


def test_every_long_module_is_documented_with_a_reason():
    documented = documented_lengths()
    long = {m: n_lines(m) for m in modules() if n_lines(m) > MAX_LINES}
    missing = sorted(set(long) - set(documented))
    assert not missing, (f"modules over {MAX_LINES} lines without a '- `name.py` (N lines): reason' entry in "
                         f"docs/ARCHITECTURE.md's Conventions: {[(m, long[m]) for m in missing]}")
    for module, (count, reason) in documented.items():
        assert module in modules(), f"Conventions gives a line count for {module}.py, which does not exist"
        real = n_lines(module)
        assert abs(real - count) <= LINE_SLACK, (
            f"docs/ARCHITECTURE.md says {module}.py has {count} lines; it has {real}: update the entry")
        assert len(reason.split()) >= 5, f"{module}.py: give the reason it is over {MAX_LINES} lines, not {reason!r}"


# ----------------------------------------------------------------------------- "Introduced in notebooks/..."
def introductions():
    """``(module, object name or "" for the module, notebook, is a public top-level def/class)``
    for every "Introduced in" reference of every docstring of the package."""
    out = []
    for module in modules():
        t = tree(module)
        out += [(module, "", nb, False) for nb in introduced_in(ast.get_docstring(t))]
        for node in ast.walk(t):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                public = node in t.body and not node.name.startswith("_")
                out += [(module, node.name, nb, public) for nb in introduced_in(ast.get_docstring(node))]
    return out


def test_every_notebook_named_in_the_package_exists():
    existing = {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    wrong = sorted({(m, nb) for m, p in modules().items()
                    for nb in NOTEBOOK_NAME.findall(p.read_text(encoding="utf-8")) if nb not in existing})
    assert not wrong, f"mlnb/ names notebooks that do not exist under notebooks/: {wrong}"
    assert introductions(), "no 'Introduced in notebooks/...' reference found: is the parser broken?"


def test_introducing_notebooks_use_what_they_introduce():
    wrong = []
    for module, name, nb, public in introductions():
        if not public or (module, name) in KNOWN_WRONG:
            continue
        code = notebook_code(nb)
        packages = {m for m in reachers(module) if m.endswith("/__init__") and m.startswith(module.rpartition("/")[0])}
        if not (uses(code, name) or any(uses_module(code, m) for m in {module, *packages})):
            wrong.append(f"{module}.{name}: 'Introduced in notebooks/{nb}', whose code uses neither {name} "
                         f"nor mlnb.{module}")
    assert not wrong, "\n".join(wrong)


def test_introducing_notebooks_reach_the_module():
    """A module's notebook imports it, or a module that imports it (``attacks`` for ``attacks/_core``)."""
    wrong = []
    for module, name, nb, _ in introductions():
        if name or (module, "") in KNOWN_WRONG:
            continue
        code = notebook_code(nb)
        if not any(uses_module(code, m) for m in {module, *reachers(module)}):
            wrong.append(f"{module}.py: 'Introduced in notebooks/{nb}', whose code uses neither mlnb.{module} "
                         f"nor a module that imports it ({sorted(reachers(module))})")
    assert not wrong, "\n".join(wrong)


def test_known_wrong_references_are_still_wrong():
    """An allow-listed reference that is now right should leave KNOWN_WRONG."""
    for (module, name), right in KNOWN_WRONG.items():
        refs = [nb for m, n, nb, _ in introductions() if (m, n) == (module, name)]
        assert refs and right not in refs, f"{module}.{name or '(module)'} now names {right}: drop it from KNOWN_WRONG"


# ----------------------------------------------------------------------------- layers and private names
LAYERS = {  # docs/ARCHITECTURE.md "## Layers": a module imports only from its own layer or those before it
    1: ("validate", "utils", "probability"),
    2: ("target", "labels", "case_study"),
    3: ("metrics",),
    4: ("animals", "voc", "data", "models", "presets", "training", "purify", "robust_training", "surrogates"),
    5: ("attacks/", "defenses", "wrappers", "art_door", "smoothing"),
    6: ("store", "experiment_plan", "experiments", "experiments_cli", "tutorial", "paper/", "transfer"),
    7: ("plots/",),
    8: ("explorer", "explorer_app", "running/"),
}


def layer(module: str) -> int:
    for rank, members in LAYERS.items():
        if module in members or any(m.endswith("/") and module.startswith(m) for m in members):
            return rank
    raise AssertionError(f"{module}.py has no layer in LAYERS (docs/ARCHITECTURE.md '## Layers'): add it")


def relative_imports():
    """``(importer, imported module, names)`` for every relative import of the package, in functions too."""
    for module in modules():
        for node in ast.walk(tree(module)):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                for target in _resolve(module, node):
                    yield module, target, [a.name for a in node.names]


def test_layers_match_the_documentation():
    doc = section("Layers")
    for rank, members in LAYERS.items():
        line = re.search(rf"^{rank}\. [^\n]*$", doc, re.M)
        assert line, f"docs/ARCHITECTURE.md '## Layers' has no item {rank}"
        for m in members:
            assert f"`{m}.py`" in line.group(0) or f"`{m}`" in line.group(0), f"layer {rank} of the doc omits {m}"
    for module in modules():
        layer(module)


def test_imports_go_one_way():
    back = [f"{a}.py (layer {layer(a)}) imports {b}.py (layer {layer(b)})"
            for a, b, _ in relative_imports() if layer(b) > layer(a)]
    assert not back, "imports against the layers of docs/ARCHITECTURE.md:\n" + "\n".join(sorted(set(back)))


def test_no_private_names_cross_a_package():
    def package(m):
        return m.rpartition("/")[0]

    crossing = [f"{a}.py imports {n} from {b}.py" for a, b, names in relative_imports() for n in names
                if n.startswith("_") and package(a) != package(b)]
    assert not crossing, "private names imported from another package:\n" + "\n".join(sorted(set(crossing)))
