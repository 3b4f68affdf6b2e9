"""The layout's rules, read from the imports of every module (ast) and checked in a fresh process.

The layer table (MAY_IMPORT): the shell's utilities (files, processes, validation, profiles,
runtime) import no part; the objectives import only the shell; the evidence imports only the shell,
and never torch; the theory imports the objectives and the evidence, never the model or the
integrations; the model imports every part but the integrations; the integrations import every
part but the model; the commands (cli, reproduce, lab) may import anything. `import
passk_companion` and the evidence load no torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "passk_companion"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function, as absolute names."""
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # submodules by name
    return found


MODULES = sorted(SRC.rglob("*.py"))

# The layer table. A unit is a part (a subpackage) or one of the two halves of the shell: its
# utilities (below every part: the parts use them) and its commands (above everything).
SHELL = ("files", "processes", "validation", "profiles", "runtime")
COMMANDS = ("cli", "__main__", "reproduce", "lab")
PARTS = ("objectives", "theory", "model", "evidence", "integrations")
MAY_IMPORT = {  # unit -> the units its modules may import (besides their own)
    "shell": (),
    "objectives": ("shell",),
    "evidence": ("shell",),
    "theory": ("shell", "objectives", "evidence"),
    "model": ("shell", "objectives", "evidence", "theory"),
    "integrations": ("shell", "objectives", "evidence", "theory"),
    "commands": ("shell", *PARTS),
}


def _unit(module: str) -> str | None:
    """The unit of a module name of the package (None for the package itself)."""
    parts = module.split(".")
    if parts[0] != "passk_companion" or len(parts) == 1:
        return None
    if parts[1] in PARTS:
        return parts[1]
    if parts[1] in SHELL:
        return "shell"
    if parts[1] in COMMANDS:
        return "commands"
    raise AssertionError(f"{module} is in no unit of the layer table")


def _table_violations(unit: str, table: dict[str, tuple[str, ...]] = MAY_IMPORT) -> list[str]:
    out = []
    for path in MODULES:
        name = _module_name(path)
        if _unit(name) != unit:
            continue
        for imported in _imports(path):
            target = _unit(imported) if imported.startswith("passk_companion.") else None
            if target is not None and target != unit and target not in table[unit]:
                out.append(f"{name} imports {imported} ({unit} -> {target})")
    return out


@pytest.mark.parametrize("unit", sorted(MAY_IMPORT))
def test_the_layer_table(unit):
    assert _table_violations(unit) == []


def test_every_module_is_in_the_table():
    assert {_unit(_module_name(p)) for p in MODULES} - {None} == set(MAY_IMPORT)


def _violations(part: str, banned: tuple[str, ...]) -> list[str]:
    out = []
    for path in MODULES:
        name = _module_name(path)
        if not (name == part or name.startswith(part + ".")):
            continue
        for imported in _imports(path):
            if any(imported == b or imported.startswith(b + ".") for b in banned):
                out.append(f"{name} imports {imported}")
    return out


def test_the_evidence_never_imports_torch():
    assert _violations("passk_companion.evidence", ("torch",)) == []


def test_the_rules_can_fail():
    """The checkers see a forbidden import when there is one: the model imports torch, and the
    commands import the parts, which a table that allows them only the shell refuses."""
    assert _violations("passk_companion.model", ("torch",))
    assert _table_violations("commands", {**MAY_IMPORT, "commands": ("shell",)})


def test_the_three_parts_exist_with_their_modules():
    for part, modules in {
        "theory": ("passk", "symbolic", "exact", "maxk", "sampling", "contextual", "harness",
                   "dynamics", "bandit", "gaussian_toy"),
        "model": ("tasks", "gpt", "generate", "config", "pretrain", "rl", "evaluation",
                  "checkpoint", "sweep"),
        "evidence": ("verdicts", "claims", "report", "site", "plots", "params", "analysis",
                     "matching"),
    }.items():  # fmt: skip
        for module in modules:
            assert (SRC / part / f"{module}.py").is_file() or (SRC / part / module).is_dir()


def test_import_companion_and_the_evidence_load_no_torch():
    code = (
        "import sys, passk_companion\n"
        "import passk_companion.evidence.verdicts, passk_companion.evidence.claims\n"
        "import passk_companion.evidence.report, passk_companion.evidence.site\n"
        "import passk_companion.evidence.params, passk_companion.evidence.matching\n"
        "import passk_companion.profiles, passk_companion.validation, passk_companion.files\n"
        "import passk_companion.reproduce\n"
        "assert 'torch' not in sys.modules, 'torch was loaded'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
