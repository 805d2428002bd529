"""Hostile config text (issue 19, M5): no alias bombs, no flood of an error line, every parse failure one line."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import load_config
from core.errors import UserError

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("bcdefgh", "cdefghi")
)


def _one_line_error(fn) -> str:
    with pytest.raises(UserError) as exc:
        fn()
    text = str(exc.value)
    assert "\n" not in text and len(text) < 400, text[:500]
    return text


def test_m5_yaml_aliases_are_refused_in_a_config_file(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB + "run:\n  name: *i\n")  # 9**9 strings once expanded
    assert "aliases" in _one_line_error(lambda: load_config(path))


def test_m5_an_alias_bomb_is_one_line_from_the_real_command_under_a_memory_cap(tmp_path):
    """`imgclf-train --config bomb.yaml` in a subprocess capped at 4 GB of address space: expanded, the
    bomb's 9**9 strings would pass the cap (a MemoryError traceback) instead of one line and exit 2."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB + "run:\n  name: *i\n")
    cap = 4 << 30
    r = subprocess.run(
        [sys.executable, "-m", "train.main", "--config", str(path)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)),
    )
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "aliases" in err[0], r.stderr[-2000:]


def test_m5_yaml_aliases_are_refused_in_an_override():
    # not expanded: the override's text stays text, and is refused as that
    text = _one_line_error(lambda: load_config(None, ["train.epochs=[&a [1, 1], *a, *a]"]))
    assert "train.epochs" in text and "'[&a [1, 1], *a, *a]'" in text


def test_m5_a_5000_digit_integer_is_one_line_in_a_file_and_an_override(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("train:\n  epochs: " + "9" * 5000 + "\n")
    assert "not valid YAML" in _one_line_error(lambda: load_config(path))
    assert "train.epochs" in _one_line_error(lambda: load_config(None, ["train.epochs=" + "9" * 5000]))


def test_m5_a_non_utf8_config_file_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"run:\n  name: caf\xe9\n")
    assert "not UTF-8" in _one_line_error(lambda: load_config(path))


@pytest.mark.parametrize(
    "override",
    ["train.epochs=" + "x" * 1_000_000, "preprocess.interpolation=" + "q" * 100_000, "k" * 100_000 + "=1"],
)
def test_m5_values_quoted_in_errors_are_cut_to_about_100_characters(override):
    _one_line_error(lambda: load_config(None, [override]))


def test_m5_deep_nesting_is_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("train:\n  epochs: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "not valid YAML" in _one_line_error(lambda: load_config(path))
