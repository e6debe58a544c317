"""The layers the tree shows: the app above the stages, the stages above the shared core.

Every import is checked, function-level ones included: the shared core never reaches up into a
stage or the app, and a stage never imports another stage, except the one edge named here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = "moments_stream"
STAGES = ("producer", "consumer", "aggregator")
APP = "pipeline"
# `producer enqueue --reclassify` names the model exactly as a consumer loading the weights would
# (consumer.classify.configured_model_id), imported only for that option.
ALLOWED_STAGE_EDGES = {("producer/service.py", "consumer.classify")}


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


def top_package(module: str) -> str:
    return module.split(".")[0]


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("path", sources(CORE), ids=lambda path: str(path.relative_to(REPO)))
def test_the_shared_core_imports_no_stage_and_not_the_app(path: Path) -> None:
    upward = [module for module in imported_modules(path) if top_package(module) in (*STAGES, APP)]
    assert upward == [], f"{path.relative_to(REPO)} imports {upward}: move what they share into {CORE}"


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_the_core_and_no_other_stage(stage: str) -> None:
    crossings = []
    for path in sources(stage):
        name = str(path.relative_to(REPO))
        for module in imported_modules(path):
            package = top_package(module)
            if package == APP or (package in STAGES and package != stage and (name, module) not in ALLOWED_STAGE_EDGES):
                crossings.append(f"{name} imports {module}")
    assert crossings == []


def test_the_layer_rules_see_the_imports_they_forbid(tmp_path: Path) -> None:
    """The checker itself: a function-level import up into a stage is found."""
    module = tmp_path / "module.py"
    module.write_text(
        "import json\n\ndef f():\n    from consumer.jobs import classify_video\n    import producer.cli\n"
    )
    assert [top_package(name) for name in imported_modules(module)] == ["json", "consumer", "producer"]
