"""Where downloaded data sets live: ``<cache root>/<data set name>/<IDX files>``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ewc.data.catalog import DatasetName


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The cache root: ``$EWC_CACHE``, else ``$XDG_CACHE_HOME/ewc``, else ``~/.cache/ewc``.

    Empty variables are ignored, and so is a relative ``XDG_CACHE_HOME`` (as the XDG Base
    Directory specification requires).

    Args:
        environ: the environment to read; ``os.environ`` when None.
    """
    env = os.environ if environ is None else environ
    if env.get("EWC_CACHE"):
        return Path(env["EWC_CACHE"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "ewc"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".cache" / "ewc"


def dataset_cache_dir(
    name: DatasetName | str, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The folder that holds the files of data set ``name`` under the cache root ``cache_dir``.

    Args:
        name: the data set; ValueError lists the valid names.
        cache_dir: the cache root; :func:`default_cache_dir` when None.
    """
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return root / DatasetName.parse(name).value
