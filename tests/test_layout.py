"""The layout's rules, read from the imports of every module (ast) and checked in a fresh process:
the evidence never imports torch, the theory or the model; the theory never imports the model;
the objectives use only the closed forms of theory.passk; `import passk_companion` loads no
torch."""

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
FORBIDDEN = {
    "passk_companion.evidence": (
        "torch",
        "passk_companion.theory",
        "passk_companion.model",
        "passk_companion.objectives",
        "passk_companion.integrations",
    ),  # fmt: skip
    "passk_companion.theory": ("passk_companion.model", "passk_companion.integrations"),
    "passk_companion.objectives": (
        "passk_companion.model",
        "passk_companion.evidence",
        "passk_companion.integrations",
    ),
}


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


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_layer_rules(part):
    assert _violations(part, FORBIDDEN[part]) == []


def test_objectives_use_only_the_closed_forms_of_the_theory():
    theory = {
        imported
        for path in MODULES
        if _module_name(path).startswith("passk_companion.objectives")
        for imported in _imports(path)
        if imported.startswith("passk_companion.theory")
    }
    assert theory <= {
        "passk_companion.theory.passk",
        "passk_companion.theory.passk.pass_at_k_unbiased",
    }


def test_the_rules_can_fail():
    """The checker sees a forbidden import when there is one (the model does import torch)."""
    assert _violations("passk_companion.model", ("torch",))


def test_the_three_parts_exist_with_their_modules():
    for part, modules in {
        "theory": ("passk", "symbolic", "exact", "maxk", "sampling", "contextual", "harness",
                   "dynamics", "bandit", "gaussian_toy"),
        "model": ("tasks", "gpt", "generate", "config", "pretrain", "rl", "evaluation",
                  "checkpoint", "sweep"),
        "evidence": ("verdicts", "claims", "report", "site", "plots", "params"),
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
        # lazy, on first use
        "assert passk_companion.pass_at_k is not None and 'torch' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
