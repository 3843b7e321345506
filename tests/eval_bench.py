"""A small multi-format verification benchmark of synthetic faces, for the tests.

``make_bench(root)`` writes, from synthetic people not in facekd's default training set:

* ``people/``: an ImageFolder (4 people x 4 images): pairs drawn with a seed;
* ``people.bin``: 20 fixed pairs of those same files as an InsightFace ``.bin``;
* ``cross.csv``: 20 pairs over ``people/`` as a CSV pairs file with a header and folds 0..3;
* ``lfw/`` + ``pairs.txt``: 4 other people in LFW layout and 20 LFW ``pairs.txt`` lines.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

from faces.synthetic import write_synthetic_faces
from faces.verification_sets import write_bin


def _pairs(people: dict[str, list[Path]], n: int) -> list[tuple[Path, Path, bool]]:
    """``n`` pairs, genuine and impostor alternating, in a fixed order."""
    names = sorted(people)
    genuine = [(a, b, True) for name in names for a, b in itertools.combinations(people[name], 2)]
    impostor = [
        (people[x][i % 4], people[y][(i + 1) % 4], False)
        for i, (x, y) in enumerate(itertools.combinations(names, 2))
    ] * 4
    out = []
    for g, i in zip(genuine, impostor, strict=False):
        out += [g, i]
    return out[:n]


def make_bench(root: Path) -> dict[str, Path]:
    """Write the benchmark under ``root``; returns its paths by name."""
    folder = write_synthetic_faces(root / "people", 4, 4, seed=11)
    people = {p.name: sorted(p.glob("*.jpg")) for p in sorted(folder.iterdir()) if p.is_dir()}
    pairs = _pairs(people, 20)
    bin_path = write_bin(
        root / "people.bin",
        [(a.read_bytes(), b.read_bytes()) for a, b, _ in pairs],
        [s for _, _, s in pairs],
    )
    csv = root / "cross.csv"
    lines = ["path_a,path_b,same,fold"]
    for k, (a, b, same) in enumerate(pairs):
        rel_a, rel_b = a.relative_to(folder), b.relative_to(folder)
        lines.append(f"{rel_a},{rel_b},{int(same)},{k % 4}")
    csv.write_text("\n".join(lines) + "\n")
    other = write_synthetic_faces(root / "lfw_src", 4, 4, seed=12)
    lfw = root / "lfw"
    lfw_people: dict[str, list[Path]] = {}
    for i, person in enumerate(sorted(p for p in other.iterdir() if p.is_dir())):
        name = f"Person_{chr(65 + i)}"
        (lfw / name).mkdir(parents=True)
        for k, src in enumerate(sorted(person.glob("*.jpg")), 1):
            shutil.copy(src, lfw / name / f"{name}_{k:04d}.jpg")
        lfw_people[name] = sorted((lfw / name).glob("*.jpg"))
    txt = []
    for a, b, same in _pairs(lfw_people, 20):
        na, ka = a.parent.name, int(a.stem[-4:])
        nb, kb = b.parent.name, int(b.stem[-4:])
        txt.append(f"{na}\t{ka}\t{kb}" if same else f"{na}\t{ka}\t{nb}\t{kb}")
    pairs_txt = root / "pairs.txt"
    pairs_txt.write_text("\n".join(txt) + "\n")
    return {"folder": folder, "bin": bin_path, "csv": csv, "lfw": lfw, "pairs_txt": pairs_txt}
