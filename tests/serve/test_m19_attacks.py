"""M19 attacked: a tampered `<out>.meta.json`, symlinked spellings of written images, a base folder gone,
an output that began with URLs only, and --evaluate of rows written through a link. Each test failed on
the first M19 code."""

from __future__ import annotations

import json
import os

import pytest

from serve.row_paths import DoneRows, row_path
from serve.sort import main as sort_main
from tests.serve.helpers import read_rows, save_picture, serve

QUIET = ("--workers", 0, "--no-progress")
DEAD_URL = "http://127.0.0.1:9/i.jpg"  # the discard port: refused at once, an error row


def _tree(root, names):
    for i, name in enumerate(names):
        save_picture(root / name, seed=i, size=(24, 20))


def _paths(out):
    return [r["path"] for r in read_rows(out)]


@pytest.fixture
def written(bundle, tmp_path):
    """A/{1/a1,2/a2,x}.png classified into p.csv; B/y.png not yet."""
    a, b = tmp_path / "A", tmp_path / "B"
    _tree(a, ["1/a1.png", "2/a2.png", "x.png"])
    _tree(b, ["y.png"])
    out = tmp_path / "p.csv"
    assert serve(bundle, a, "--out", out, *QUIET) == 0
    return a, b, out


DAMAGE = [
    ("base", 5),
    ("base", []),
    ("base", "relative/folder"),
    ("base", ""),
    ("base", "/x\u0000y"),
    ("inputs", "/one/path/as/a/string"),  # iterated, it would be one input per character
    ("inputs", [5, None]),
    ("inputs", ["relative"]),
]


@pytest.mark.parametrize(("key", "value"), DAMAGE)
def test_m19_resume_refuses_a_damaged_base_record_and_keeps_the_csv(bundle, written, key, value, capsys):
    a, b, out = written
    meta = out.with_name("p.csv.meta.json")
    record = json.loads(meta.read_text())
    record[key] = value
    meta.write_text(json.dumps(record))
    before = out.read_bytes()
    with pytest.raises(SystemExit) as exc:
        serve(bundle, a, b, "--out", out, "--resume", *QUIET)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "p.csv.meta.json is damaged" in err and f"'{key}'" in err and "--overwrite" in err
    assert out.read_bytes() == before
    assert json.loads(meta.read_text())[key] == value  # the record is not rewritten either


@pytest.mark.parametrize(("key", "value"), [*DAMAGE, (None, None)])
def test_m19_sort_refuses_a_damaged_base_record_in_one_line(written, key, value, capsys, tmp_path):
    _, _, out = written
    meta = out.with_name("p.csv.meta.json")
    if key is None:
        meta.write_text("{not json")
    else:
        record = json.loads(meta.read_text())
        record[key] = value
        meta.write_text(json.dumps(record))
    with pytest.raises(SystemExit) as exc:
        sort_main([str(out), "--to", str(tmp_path / "sorted"), "--dry-run"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "p.csv.meta.json is damaged" in err and "--root" in err
    assert not (tmp_path / "sorted").exists()


def test_m19_resume_skips_an_image_written_under_its_real_name_and_reached_through_a_link(
    bundle, written, tmp_path
):
    a, b, out = written
    (b / "to_x.png").symlink_to(a / "x.png")  # a file link
    (b / "to_1").symlink_to(a / "1", target_is_directory=True)  # a folder link
    assert serve(bundle, b, a, "--out", out, "--resume", *QUIET) == 0  # B first: the links come first
    assert _paths(out) == ["1/a1.png", "2/a2.png", "x.png", "../B/y.png"]


def test_m19_resume_skips_an_image_written_through_a_link_and_reached_under_its_real_name(bundle, tmp_path):
    a, links = tmp_path / "A", tmp_path / "links"
    _tree(a, ["1/a1.png", "x.png"])
    links.mkdir()
    (links / "to_x.png").symlink_to(a / "x.png")
    (links / "to_1").symlink_to(a / "1", target_is_directory=True)
    out = tmp_path / "p.csv"
    assert serve(bundle, links, "--out", out, *QUIET) == 0
    assert _paths(out) == ["to_1/a1.png", "to_x.png"]
    assert serve(bundle, a, "--out", out, "--resume", *QUIET) == 0
    assert _paths(out) == ["to_1/a1.png", "to_x.png"]


def test_m19_a_resume_with_nothing_new_reads_no_folder_for_links(tmp_path, monkeypatch):
    """The real-location keys of done rows are looked up only when a new image comes, once per folder."""
    (tmp_path / "d").mkdir()
    done = {f"d/{i}.png" for i in range(1000)}
    rows = DoneRows(done, str(tmp_path))
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: listed.append(p) or real_scandir(p))
    assert all(rows.has(p, str(tmp_path / p)) for p in done)
    assert listed == []
    assert not rows.has("d/new.png", str(tmp_path / "d" / "new.png"))
    assert len(listed) == 1 and rows._aliases == set()  # one listing for 1,000 rows, no second key


def test_m19_an_output_begun_with_urls_only_gets_a_base_from_its_first_local_input(bundle, written, tmp_path):
    a, b, _ = written
    out = tmp_path / "u.csv"
    assert serve(bundle, DEAD_URL, "--out", out, "--timeout", 5, *QUIET) == 0
    assert serve(bundle, a / "x.png", "--out", out, "--resume", "--timeout", 5, *QUIET) == 0
    assert json.loads(out.with_name("u.csv.meta.json").read_text())["base"] == str(a)
    assert serve(bundle, b, a, "--out", out, "--resume", *QUIET) == 0  # the base stays A: no new keys
    paths = _paths(out)
    assert paths[:2] == [DEAD_URL, "x.png"] and len(paths) == len(set(paths)) == 5
    assert sort_main([str(out), "--to", str(tmp_path / "sorted"), "--mode", "copy"]) == 0
    assert len(list((tmp_path / "sorted").rglob("*.png"))) == 4


def test_m19_resume_says_so_when_the_base_folder_is_gone(bundle, written, tmp_path, capsys):
    a, b, out = written
    a.rename(tmp_path / "A_renamed")
    capsys.readouterr()
    assert serve(bundle, b, "--out", out, "--resume", *QUIET) == 0  # a drop folder emptied away: goes on
    err = capsys.readouterr().err
    assert f"warning: {a}, the folder the rows of p.csv are relative to, is gone" in err
    assert _paths(out) == ["1/a1.png", "2/a2.png", "x.png", "../B/y.png"]


def test_m19_evaluate_counts_rows_written_through_a_link_to_the_labelled_folder(bundle, tmp_path):
    labelled = tmp_path / "test"
    _tree(labelled, ["1/a.png", "2/b.png", "loose.png"])
    (tmp_path / "link").symlink_to(labelled, target_is_directory=True)
    out = tmp_path / "p.csv"
    assert serve(bundle, tmp_path / "link", "--out", out, "--probs", *QUIET) == 0
    assert serve(bundle, labelled, "--out", out, "--resume", "--probs", "--evaluate", *QUIET) == 0
    assert len(read_rows(out)) == 3  # nothing classified twice
    metrics = json.loads((tmp_path / "p_eval" / "test_metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["data"]["excluded"] == 1


def test_m19_real_keys_match_the_written_cells_for_a_base_behind_a_link(tmp_path):
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    base = str(tmp_path / "alias")
    rows = DoneRows({"sub/f.png"}, base)
    assert rows.real_key(str(real / "sub" / "f.png")) == "sub/f.png" == row_path(f"{base}/sub/f.png", base)
    assert rows.has("../real/sub/f.png", str(real / "sub" / "f.png"))


def test_m19_show_with_resume_shows_an_image_already_written_without_a_second_row(bundle, written, tmp_path):
    a, _, out = written
    before = out.read_bytes()
    figure = tmp_path / "fig.png"
    assert (
        serve(bundle, a / "x.png", "--show", "--figure", figure, "--out", out, "--resume", "--no-progress")
        == 0
    )
    assert figure.is_file() and out.read_bytes() == before
    assert (
        serve(bundle, a.parent / "B" / "y.png", "--show", "--figure", figure, "--out", out, "--resume") == 0
    )
    assert _paths(out)[-1] == "../B/y.png" and len(_paths(out)) == 4


def test_m19_resume_refuses_a_record_from_before_the_base_whose_cwd_is_damaged(bundle, written, capsys):
    a, b, out = written
    meta = out.with_name("p.csv.meta.json")
    record = json.loads(meta.read_text())
    del record["base"]
    record["inputs"], record["cwd"] = [str(a), str(b)], "relative"  # two inputs: the rows were cwd-relative
    meta.write_text(json.dumps(record))
    with pytest.raises(SystemExit) as exc:
        serve(bundle, a, "--out", out, "--resume", *QUIET)
    assert exc.value.code == 2 and "'cwd' is \"relative\"" in capsys.readouterr().err


def test_m19_a_row_written_through_a_link_to_the_base_itself_is_found(tmp_path):
    (tmp_path / "base" / "sub").mkdir(parents=True)
    base = tmp_path / "base"
    (base / "again").symlink_to(base, target_is_directory=True)
    (base / "sub_again").symlink_to(base / "sub", target_is_directory=True)
    rows = DoneRows({"again/x.png", "sub_again/y.png"}, str(base))
    assert rows.has("x.png", str(base / "x.png"))
    assert rows.has("sub/y.png", str(base / "sub" / "y.png"))
    assert not rows.has("sub/x.png", str(base / "sub" / "x.png"))
