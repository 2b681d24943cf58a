"""The packages are stages, and data flows one way: a package imports only packages above it
in STAGES (at module level or inside a function alike). A cycle, such as the one
`encoders` <-> `ranking` had through the LLM reranker's prompts, fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["recdata", "encoders", "feature_repo", "featurestore", "kg", "ranking", "serve"]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_each_stage_imports_only_the_stages_above_it():
    upward = []
    for rank, package in enumerate(STAGES):
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, f"stage package {package} is missing"
        for path in files:
            for name in _imports(path) & set(STAGES):
                if STAGES.index(name) > rank:
                    upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def test_the_feature_declarations_import_nothing_of_the_project():
    """feature_repo/ranker.py is pure data: Feast's definitions and the ranker both read it."""
    assert not _imports(ROOT / "feature_repo" / "ranker.py") & set(STAGES)
