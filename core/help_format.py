"""How every imgclf command's --help states defaults (argparse only: --help must not import torch)."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every default in --help, said once: argparse's `(default: X)` for a value, the help text's own words
    where it says `(default ...)` itself or the default is decided at run time (None), and nothing for an
    off switch. Description and epilog keep their line breaks (usage examples)."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)
