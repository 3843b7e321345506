"""facekd's cache folder: what it derives from the user's data lives here, never beside the data.

``$FACEKD_CACHE`` when set, else ``$XDG_CACHE_HOME/facekd``, else ``~/.cache/facekd``. Entries
about a folder are keyed by its resolved path (:func:`path_key`); their validity is checked by
whoever reads them (e.g. the folder modification times of an ImageFolder manifest).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ENV = "FACEKD_CACHE"


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    explicit = os.environ.get(ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "facekd"


def path_key(path: str | os.PathLike) -> str:
    """A file-name-safe key of a folder or file: sha256 of its resolved absolute path."""
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()


def cache_path(kind: str, path: str | os.PathLike, suffix: str = ".json") -> Path:
    """``<cache>/<kind>/<path_key(path)><suffix>``: the cache entry of ``kind`` for ``path``."""
    if not kind or "/" in kind or kind.startswith("."):
        raise ValueError(f"cache kind must be a plain folder name, got {kind!r}")
    return cache_dir() / kind / f"{path_key(path)}{suffix}"
