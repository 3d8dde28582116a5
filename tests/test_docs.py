"""Every ```python block of README.md, docs/*.md and the guides runs as written (one namespace per page)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "guides").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_snippets_run_as_written(page, tmp_path, monkeypatch):
    blocks = BLOCK.findall(page.read_text())
    if page.name not in ("benchmarks.md", "design.md", "results.md"):
        assert blocks, f"{page.name} has no python snippet"
    monkeypatch.chdir(tmp_path)
    # A custom pipeline loaded by a snippet is copied into diffusers' modules cache: keep it in tmp_path.
    from diffusers.utils import dynamic_modules_utils

    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    namespace = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page.name}[block {i}]", "exec"), namespace)
