"""`python -m train.demo_data DST`: the README's first command."""

from __future__ import annotations

import subprocess
import sys

from tests.train.helpers import REPO


def _demo_data(*argv: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "train.demo_data",
            *argv,
            "--train",
            "1",
            "--valid",
            "1",
            "--test",
            "0",
            "--classes",
            "2",
            "--size",
            "16",
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_writes_the_demo_folder(tmp_path):
    proc = _demo_data(str(tmp_path / "demo"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "demo" / "train").iterdir()) == ["1", "2"]


def test_an_unwritable_destination_is_one_error_line_and_exit_2(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    proc = _demo_data(str(tmp_path / "file" / "demo"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert str(tmp_path / "file") in proc.stderr


def test_a_second_run_with_the_same_settings_keeps_the_folder_and_says_so(tmp_path):
    assert _demo_data(str(tmp_path / "demo"), cwd=tmp_path).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*")}
    proc = _demo_data(str(tmp_path / "demo"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("(4 images, same settings); kept")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*")} == before


def test_a_folder_holding_other_files_is_refused_not_mixed_into(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    proc = _demo_data(str(tmp_path / "mine"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "not a demo data set" in proc.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["photo.jpg"]
    assert not list(tmp_path.glob(".*"))
