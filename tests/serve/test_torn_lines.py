"""Torn-line repair: a kill anywhere inside the last write leaves exactly the complete rows before it."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from core.errors import UserError
from serve.writer import Layout, RowWriter, error_row, iter_rows, ok_row, repair_tail

LAYOUT = Layout(("1", "2", "3"), ("a", "b", "c"), topk=2)
NAMES = [
    "plain.jpg",
    "new\nline.jpg",
    "com,ma.jpg",
    'quo"te.jpg',
    "ends with newline\n",
    "\n",
    "cr\r.jpg",
    'all\n,"\r\n.jpg',
]


def _write(path, names, fmt="csv"):
    layout = Layout(LAYOUT.classes, LAYOUT.display_names, 2, False, fmt)
    with RowWriter(path, layout) as w:
        for name in names:
            w.write(
                [
                    ok_row(layout, name, np.array([0.2, 0.5, 0.3]))
                    if len(name) % 2
                    else error_row(layout, name, "bad\nreason")
                ]
            )
    return layout


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("last", NAMES)
def test_a_tear_anywhere_in_the_last_row_keeps_exactly_the_rows_before(tmp_path, fmt, last):
    whole, before = tmp_path / "whole", tmp_path / "before"
    layout = _write(whole, [*NAMES, last], fmt)
    _write(before, NAMES, fmt)
    data, keep = whole.read_bytes(), before.read_bytes()
    assert data.startswith(keep)
    for cut in range(len(keep), len(data) + 1):
        torn = tmp_path / "torn"
        torn.write_bytes(data[:cut])
        repair_tail(torn, fmt)
        assert torn.read_bytes() == (data if cut == len(data) else keep), (cut, data[len(keep) : cut])
    assert [r["path"] for r in iter_rows(whole, layout)] == [*NAMES, last]


def test_names_with_newlines_commas_quotes_and_cr_read_back_with_plain_csv(tmp_path):
    f = tmp_path / "p.csv"
    _write(f, NAMES)
    with open(f, newline="", encoding="utf-8") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == NAMES


def test_a_torn_header_leaves_an_empty_file(tmp_path):
    f = tmp_path / "p.csv"
    f.write_bytes(b"path,sta")
    assert repair_tail(f) == 8 and f.read_bytes() == b""


def test_damage_before_the_end_is_refused_not_cut(tmp_path):
    f = tmp_path / "p.csv"
    _write(f, NAMES)
    lines = f.read_bytes().split(b"\n")
    f.write_bytes(b"\n".join([lines[0], lines[1], b"only,three,fields", *lines[2:]]))
    size = f.stat().st_size
    with pytest.raises(UserError, match="damaged at line 3"):
        repair_tail(f)
    assert f.stat().st_size == size
