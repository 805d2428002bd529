"""core.fsio.write_csv_atomic, the one CSV writer of metrics.csv, per_class.csv, suspects.csv and the audit's
pairs: a non-UTF-8 folder name goes back out as its own bytes, and a failed write leaves the old file."""

from __future__ import annotations

import os

import pytest

from core.fsio import write_csv_atomic


def test_a_name_from_non_utf8_folder_bytes_is_written_as_those_bytes(tmp_path):
    name = os.fsdecode(b"caf\xe9")  # what os.listdir gives for a Latin-1 folder name (PEP 383)
    write_csv_atomic(tmp_path / "t.csv", ["class", "n"], [[name, 3], ["b", 0.5]])
    assert (tmp_path / "t.csv").read_bytes() == b"class,n\r\ncaf\xe9,3\r\nb,0.5\r\n"


def test_rows_that_fail_midway_leave_the_previous_file_and_no_temp(tmp_path):
    dest = tmp_path / "t.csv"
    dest.write_text("old\n")

    def rows():
        yield ["a"]
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_csv_atomic(dest, ["h"], rows())
    assert dest.read_text() == "old\n" and os.listdir(tmp_path) == ["t.csv"]
