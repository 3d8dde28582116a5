"""Loading benchmarks/<name>.py by path in tests (benchmarks/ is a folder of scripts, not a package)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(monkeypatch, *names):
    """benchmarks/<name>.py loaded by path for one test, in the order given (the siblings a module imports
    first); returns the last. ``monkeypatch`` removes them from ``sys.modules`` after the test."""
    for name in names:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
    return module
