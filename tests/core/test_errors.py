"""core.errors.cli_entry: one line and exit 2 for a user error; IMGCLF_DEBUG=1 adds the traceback after it."""

from __future__ import annotations

import pytest

from core.errors import UserError, cli_entry


@cli_entry
def _fails() -> int:
    raise UserError("the folder data/x does not exist")


def _run(capsys) -> list[str]:
    with pytest.raises(SystemExit) as exc:
        _fails()
    assert exc.value.code == 2
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("value", [None, "", "0", "false"])
def test_a_user_error_is_one_line_and_exit_2_without_debug(capsys, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("IMGCLF_DEBUG", raising=False)
    else:
        monkeypatch.setenv("IMGCLF_DEBUG", value)
    assert _run(capsys) == ["error: the folder data/x does not exist"]


def test_imgclf_debug_prints_the_full_traceback_after_the_line(capsys, monkeypatch):
    monkeypatch.setenv("IMGCLF_DEBUG", "1")
    lines = _run(capsys)
    assert lines[0] == "error: the folder data/x does not exist"
    assert lines[1] == "Traceback (most recent call last):"
    assert any("in _fails" in line for line in lines)  # the frame that raised, for a bug report
    assert lines[-1] == "core.errors.UserError: the folder data/x does not exist"
