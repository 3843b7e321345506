"""Generic verification pairs files: CSV or TSV lines ``path_a, path_b, same[, fold]``.

For cross-age and cross-pose protocols (AgeDB-30, CFP-FP, CALFW, CPLFW) that pair specific
images of a person. Paths are relative to an image root; ``same`` is ``1``/``0`` (also
``true``/``false``, ``yes``/``no``). A header line is optional: with one, the columns are named
``path_a``, ``path_b``, ``same`` and optionally ``fold``, in any order; without one, three
columns (a, b, same) or four (a, b, same, fold). Tab-separated when the first line holds a
tab, else comma-separated. Blank lines and lines starting with ``#`` are ignored. With a
``fold`` column the 10-fold protocol uses the file's folds instead of contiguous ones. Every
error names the file and the line.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from faces.data import IMAGE_SUFFIXES, FaceDataError

__all__ = ["PathPair", "is_generic_pairs_file", "parse_pairs_file"]

COLUMNS = ("path_a", "path_b", "same")
_TRUE = {"1", "true", "yes", "same"}
_FALSE = {"0", "false", "no", "different"}


@dataclass(frozen=True)
class PathPair:
    """One pair of a pairs file: two image paths relative to the root, same person or not."""

    a: str
    b: str
    same: bool
    fold: int | None
    line: int


def _data_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FaceDataError(f"pairs file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FaceDataError(f"cannot read pairs file {path}: {exc}") from exc
    return [
        (n, line)
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def is_generic_pairs_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a CSV/TSV pairs file (else LFW's ``pairs.txt`` layout).

    ``.csv``/``.tsv`` always; otherwise a first line holding a comma, an image file name, a
    ``/`` or the ``path_a`` header is one; LFW's ``name n1 n2`` lines are not."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        return True
    lines = _data_lines(path) if path.is_file() else []
    if not lines:
        return False
    first = lines[0][1]
    fields = first.replace(",", " ").split()
    return (
        "," in first
        or "path_a" in fields
        or any("/" in f or os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES for f in fields)
    )


def _same(value: str, where: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise FaceDataError(f"{where}: 'same' must be 1 or 0 (or true/false), got {value!r}")


def _header(fields: list[str], where: str) -> dict[str, int] | None:
    """Column positions of a header line, None when the line is a pair."""
    names = [f.strip().lower() for f in fields]
    if not any(n in (*COLUMNS, "fold") for n in names):
        return None
    unknown = [n for n in names if n not in (*COLUMNS, "fold")]
    missing = [c for c in COLUMNS if c not in names]
    if unknown or missing or len(set(names)) != len(names):
        raise FaceDataError(
            f"{where}: header {','.join(fields)!r} must name the columns path_a, path_b, same "
            f"and optionally fold, once each"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            + (f" (missing: {', '.join(missing)})" if missing else "")
        )
    return {n: i for i, n in enumerate(names)}


def parse_pairs_file(path: str | os.PathLike) -> list[PathPair]:
    """The pairs of a CSV/TSV pairs file, in file order (see the module docstring)."""
    path = Path(path)
    lines = _data_lines(path)
    if not lines:
        raise FaceDataError(f"pairs file {path} holds no pairs")
    delimiter = "\t" if "\t" in lines[0][1] else ","
    rows = list(csv.reader([line for _, line in lines], delimiter=delimiter))
    columns = _header(rows[0], f"{path} line {lines[0][0]}")
    if columns is not None:
        lines, rows = lines[1:], rows[1:]
    if not rows:
        raise FaceDataError(f"pairs file {path} holds no pairs (only a header)")
    width = len(columns) if columns is not None else len(rows[0])
    if columns is None and width not in (3, 4):
        raise FaceDataError(
            f"{path} line {lines[0][0]}: expected 'path_a, path_b, same' or 'path_a, path_b, "
            f"same, fold' ({'tab' if delimiter == chr(9) else 'comma'}-separated), got "
            f"{lines[0][1].strip()[:80]!r}"
        )
    if columns is None:
        columns = {"path_a": 0, "path_b": 1, "same": 2, **({"fold": 3} if width == 4 else {})}
    out: list[PathPair] = []
    for (lineno, line), fields in zip(lines, rows, strict=True):
        where = f"{path} line {lineno}"
        if len(fields) != width:
            raise FaceDataError(
                f"{where}: expected {width} fields like the first line, got {len(fields)} "
                f"in {line.strip()[:80]!r}"
            )
        a, b = fields[columns["path_a"]].strip(), fields[columns["path_b"]].strip()
        if not a or not b:
            raise FaceDataError(f"{where}: an image path is empty in {line.strip()[:80]!r}")
        fold = None
        if "fold" in columns:
            raw = fields[columns["fold"]].strip()
            try:
                fold = int(raw)
            except ValueError:
                raise FaceDataError(f"{where}: fold must be an integer, got {raw!r}") from None
        out.append(PathPair(a, b, _same(fields[columns["same"]], where), fold, lineno))
    return out
