"""The training scripts' --help states the default each option gets, the per-recipe and per-task ones
written from the same tables that fill them in."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_help", ROOT / "examples" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def help_entries(script, capsys, monkeypatch):
    """{option: its help, on one line} from ``script.parse_args(["--help"])``."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exited:
        script.parse_args(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "default: None" not in " ".join(text.split())
    entries = {}
    for entry in re.split(r"\n(?=  -)", text):
        if entry.startswith("  --"):
            entries[entry.split()[0].rstrip(",")] = " ".join(entry.split())
    return entries


def shown(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def layers_of(name, script):
    if name == "train_speech":
        return [("--recipe", script.RECIPES), ("--recipe", script.RECIPE_DEFAULTS)]
    return [("--recipe", script.RECIPES), ("--degradation", script.DEGRADATION_DEFAULTS)]


@pytest.mark.parametrize("name", ["train_weather", "train_speech"])
def test_help_states_every_layered_default_from_the_tables(name, capsys, monkeypatch):
    script = load_script(name)
    entries = help_entries(script, capsys, monkeypatch)
    for flag, table in layers_of(name, script):
        for option in next(iter(table.values())):
            entry = entries[f"--{option}"]
            said = entry[entry.index("(default: "):]
            assert "None" not in said, entry
            values = {shown(defaults[option]) for defaults in table.values()}
            for value in values:
                assert re.search(rf"[ :]{re.escape(value)}( |;|\))", said), (value, entry)
            if len(values) > 1:
                assert f"with {flag} " in said and "otherwise" in said, entry
    # A flag with a plain default says it too.
    assert "(default: 0.999)" in entries["--ema_decay"] and "default: restoregrad" in entries["--mode"]


def test_speech_learning_rate_help_names_the_restoring_recipes_value(capsys, monkeypatch):
    script = load_script("train_speech")
    entries = help_entries(script, capsys, monkeypatch)
    restoring, paper = (script.RECIPE_DEFAULTS[recipe]["learning_rate"] for recipe in ("restoring", "paper"))
    assert restoring != paper
    assert f"{restoring:g} with --recipe restoring; {paper:g} otherwise" in entries["--learning_rate"]
    assert f"{script.RECIPE_DEFAULTS['restoring']['final_blend']:g} with --recipe restoring" in entries["--final_blend"]


def test_weather_learning_rate_help_names_each_tasks_value(capsys, monkeypatch):
    script = load_script("train_weather")
    entries = help_entries(script, capsys, monkeypatch)
    rates = {name: defaults["learning_rate"] for name, defaults in script.DEGRADATION_DEFAULTS.items()}
    weather = rates["mixed"]
    assert f"{weather:g} with --degradation {', '.join(script.WEATHER_DEGRADATIONS[:-1])} or " \
           f"{script.WEATHER_DEGRADATIONS[-1]}" in entries["--learning_rate"]
    assert f"{rates['sr4']:g} otherwise" in entries["--learning_rate"]
    for flag in ("--prediction_type", "--residual", "--loss_weighting"):  # --recipe restoring, the default
        assert f"{shown(script.RECIPES['restoring'][flag[2:]])} with --recipe restoring" in entries[flag]
