"""The --help of serve and export states each default once, in one style (core.help_format)."""

from __future__ import annotations

import argparse

import pytest

from core.help_format import DefaultsHelpFormatter


def _help(*arguments: tuple[str, dict]) -> str:
    p = argparse.ArgumentParser(prog="x", formatter_class=DefaultsHelpFormatter)
    for flag, kw in arguments:
        p.add_argument(flag, **kw)
    return " ".join(p.format_help().split())  # words only, whatever the wrapping


def test_a_value_default_is_stated_and_a_switch_or_run_time_default_is_not():
    text = _help(
        ("--n", {"type": int, "default": 4, "help": "count"}),
        ("--fast", {"action": "store_true", "help": "go"}),
        ("--dir", {"help": "where (default: beside --out)"}),
        ("--mode", {"default": "a", "help": "how (default a, or b with --fast)"}),
    )
    assert "count (default: 4)" in text
    assert "False" not in text and "None" not in text
    assert "(default: beside --out)" in text and "(default a, or b with --fast)" in text
    assert "(default: a)" not in text  # said once, in the help's own words


@pytest.mark.parametrize("cli", ["serve", "export"])
def test_serve_and_export_help_state_their_value_defaults_the_same_way(cli, capsys):
    from export.cli import build_parser as export_parser
    from serve.cli import build_parser as serve_parser

    parser = {"serve": serve_parser, "export": export_parser}[cli]()
    text = " ".join(parser.format_help().split())
    assert parser.formatter_class is DefaultsHelpFormatter
    assert {"serve": "(default: 5)", "export": "(default: fp32)"}[cli] in text  # --topk / --precision
    assert "(default: False)" not in text and "(default: None)" not in text
