"""CSV/TSV pairs files: header or none, fold column or none, errors that name the line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faces.data import FaceDataError
from faces.pairs_file import is_generic_pairs_file, parse_pairs_file
from faces.verification import verification_metrics
from faces.verification_sets import load_pairs_file_set, load_verification_set


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """Two people with 3 distinct images each: ``a/0.png`` .. ``b/2.png``."""
    for p, person in enumerate("ab"):
        (tmp_path / "img" / person).mkdir(parents=True)
        for k in range(3):
            colour = (40 * k, 120 * p, 7)
            Image.new("RGB", (112, 112), colour).save(tmp_path / "img" / person / f"{k}.png")
    return tmp_path / "img"


LINES = [("a/0.png", "a/1.png", 1), ("a/0.png", "b/0.png", 0), ("b/1.png", "b/2.png", 1)]
LINES += [("a/2.png", "b/2.png", 0)] * 1 + [("a/1.png", "a/2.png", 1), ("a/1.png", "b/1.png", 0)]


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_with_header_and_tsv_without_agree(tmp_path: Path, root: Path) -> None:
    csv = _write(tmp_path / "p.csv", ["path_a,path_b,same", *(f"{a},{b},{s}" for a, b, s in LINES)])
    tsv = _write(tmp_path / "p.txt", [f"{a}\t{b}\t{'true' if s else 'false'}" for a, b, s in LINES])
    assert is_generic_pairs_file(csv) and is_generic_pairs_file(tsv)
    lfw = _write(tmp_path / "lfw.txt", ["10\t300", "Ann\t1\t2"])
    assert not is_generic_pairs_file(lfw)
    a = parse_pairs_file(csv)
    b = parse_pairs_file(tsv)
    assert [(p.a, p.b, p.same, p.fold) for p in a] == [(p.a, p.b, p.same, p.fold) for p in b]
    assert a[0].line == 2 and b[0].line == 1 and a[1].same is False
    vs = load_verification_set(root, pairs_file=csv)
    assert vs.name == "p" and vs.folds is None  # 10 contiguous folds, as before
    assert len(vs.images) == 6 and vs.pairs[:, 2].tolist() == [s for _, _, s in LINES]
    assert vs.pairs[0, 0] == vs.pairs[1, 0]  # a/0.png once, for both pairs it is in
    alone = load_pairs_file_set(root, tsv)
    assert alone.name == "p" and alone.pairs.tolist() == vs.pairs.tolist()


def test_fold_column_defines_the_folds(tmp_path: Path, root: Path) -> None:
    rows = ["same,fold,path_b,path_a"]  # any column order
    rows += [f"{s},{k // 2},{b},{a}" for k, (a, b, s) in enumerate(LINES)]
    vs = load_verification_set(root, pairs_file=_write(tmp_path / "folds.csv", rows))
    assert vs.folds.tolist() == [0, 0, 1, 1, 2, 2]
    scores = np.array([0.9, 0.2, 0.8, 0.4, 0.3, 0.35])
    by_file = verification_metrics(scores, vs.pairs[:, 2], folds=vs.folds)
    # by hand, each fold's threshold from the other two: fold 0 t=0.6 (both right), fold 1
    # t=0.25 (0.4 impostor accepted), fold 2 t=0.6 (0.3 genuine rejected)
    assert by_file["acc"] == pytest.approx(np.mean([1.0, 0.5, 0.5]))
    assert by_file["threshold"] == pytest.approx(np.mean([0.6, 0.25, 0.6]))
    headerless = _write(
        tmp_path / "h.tsv", [f"{a}\t{b}\t{s}\t{k % 3}" for k, (a, b, s) in enumerate(LINES)]
    )
    assert load_verification_set(root, pairs_file=headerless).folds.tolist() == [0, 1, 2] * 2


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            ["a/0.png,a/1.png,1", "a/0.png,b/0.png"],
            r"line 2: expected 3 fields like the first line",
        ),
        (["a/0.png,a/1.png,1", "a/0.png,b/0.png,maybe"], r"line 2: 'same' must be 1 or 0"),
        (["path_a,path_b,same,fold", "a/0.png,a/1.png,1,x"], r"line 2: fold must be an integer"),
        (["path_a,path_b,label", "a/0.png,a/1.png,1"], r"line 1: header .* \(unknown: label\)"),
        (["a/0.png,a/1.png"], r"line 1: expected 'path_a, path_b, same'"),
        (["# comment", "", "a/0.png,a/9.png,1"], r"line 3: image .*a/9.png does not exist"),
        (["path_a,path_b,same"], r"holds no pairs \(only a header\)"),
        (["a/0.png,,1"], r"line 1: an image path is empty"),
        (["a/0.png,a/1.png,1,0", "a/0.png,b/0.png,0,0"], r"the fold column names one fold"),
    ],
)
def test_bad_lines_are_named(tmp_path: Path, root: Path, rows: list[str], message: str) -> None:
    path = _write(tmp_path / "bad.csv", rows)
    with pytest.raises(FaceDataError, match=message) as info:
        load_verification_set(root, pairs_file=path)
    assert str(path) in str(info.value)
