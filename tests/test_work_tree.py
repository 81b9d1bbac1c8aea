"""The suite's own hygiene: a test that leaves a file in the repository is caught (conftest)."""

from __future__ import annotations

from .conftest import PROBE, ROOT, work_tree_entries


def test_a_file_left_in_the_work_tree_is_seen_and_tool_caches_are_not():
    stray = ROOT / "params" / f"{PROBE}.yaml"
    cache = ROOT / "kit" / "__pycache__" / f"{PROBE}.pyc"
    before = work_tree_entries()
    try:
        stray.write_text("seed: 1\n")
        cache.parent.mkdir(exist_ok=True)
        cache.write_bytes(b"")
        assert work_tree_entries() - before == {f"params/{PROBE}.yaml"}
    finally:
        stray.unlink(missing_ok=True)
        cache.unlink(missing_ok=True)
    assert work_tree_entries() == before
