"""The layer rule, read from the source: core imports nothing above it, stages import no sibling, the
pipeline no CLI, the tiny default's builder only core (and nothing but the CLI knows it), the sandbox's
runner only the standard library, and no module reaches itself back.

Every import counts, function-level ones included; a module inside a package importing its own
package's modules does not count the package's ``__init__`` (Python has started importing it already).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parent.parent / "kit"
STAGES = ("prepare", "train", "merge", "quantize", "evaluate")
# Run inside the sandbox as its own source, beside nothing of kit (kit.evaluate.sandbox).
SANDBOX_RUNNER = "kit.evaluate.sandbox.runner"


def module_name(path: Path) -> str:
    parts = path.relative_to(KIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(KIT.rglob("*.py"))}


def imported(name: str) -> set[str]:
    """The modules ``name`` imports, anywhere in its source: kit's by module, others by top-level name."""
    path = MODULES[name]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{name}: relative import; kit's imports are absolute, so this rule can read them"
            base = node.module or ""
            # `from kit.core import tracking` imports the module kit.core.tracking.
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names)
    return found


def kit_imports(name: str) -> set[str]:
    return {other for other in imported(name) if other in MODULES and other != "kit"
            and not name.startswith(other + ".")}


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "kit"


def test_there_is_no_import_cycle():
    graph = {name: kit_imports(name) for name in MODULES}
    cycles = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycles.append(" -> ".join([*path[path.index(other):], other]))
            elif other not in state:
                visit(other, [*path, other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_imports_only_its_own_layer_and_those_below(name):
    own = layer(name)
    allowed = {
        "core": {"core"},
        **{stage: {"core", stage} for stage in STAGES},
        "pipeline": {"core", "pipeline", *STAGES},
        "tiny": {"core", "tiny"},
        "cli": {"core", "pipeline", "tiny", *STAGES},
        "kit": set(),
    }[own]
    assert sorted(other for other in kit_imports(name) if layer(other) not in allowed) == []


def test_the_sandbox_runner_imports_only_the_standard_library():
    outside = {other.split(".")[0] for other in imported(SANDBOX_RUNNER)} - set(sys.stdlib_module_names)
    assert outside == set()


def test_the_layers_are_the_ones_named_in_the_rule():
    assert {layer(name) for name in MODULES} == {"kit", "cli", "core", "pipeline", "tiny", *STAGES}


@pytest.mark.parametrize("name", sorted(name for name in MODULES if layer(name) not in ("tiny", "cli")))
def test_no_module_but_the_builder_and_the_cli_knows_the_tiny_default(name):
    assert "kit.tiny" not in MODULES[name].read_text()
