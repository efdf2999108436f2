"""Where a run came from: package versions, the device, the command, and the data's hash.

Every run records this in results.json and each seed's config.json, so that a number can be
traced to the code, the libraries and the exact bytes it was computed from, and `evaluate`
can say when any of them changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .io import write_json

# The packages whose version can change a number; a difference at evaluation is reported.
PACKAGES = ("torch", "transformers", "numpy")
_CHUNK = 1 << 24


def _git_commit() -> dict[str, Any] | None:
    """The commit of the checkout selfmm runs from, if it runs from one."""
    source = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "-C", str(source), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.split()
        dirty = subprocess.run(["git", "-C", top[0], "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
    # An installed wheel inside some other repository is not a checkout of selfmm.
    if not (Path(top[0]) / "src" / "selfmm").is_dir():
        return None
    return {"commit": top[1], "dirty": bool(dirty.strip())}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device | str) -> dict[str, Any]:
    """selfmm's version (and commit), Python and main packages, CUDA and the device used."""
    device = torch.device(device)
    env: dict[str, Any] = {"selfmm": __version__, "git": _git_commit(),
                           "python": platform.python_version(),
                           **{name: _version(name) for name in PACKAGES}}
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["device"] = torch.cuda.get_device_name(device)
    else:
        env["device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return env


def _cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "selfmm" / "sha256.json"


def _files(path: Path) -> list[Path]:
    """The bytes that make a data source: the file, or every file of a cache folder."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """{"path", "bytes", "sha256"} of a feature file or cache folder.

    Hashing a multi-GB MOSEI file takes seconds, so digests are remembered per machine in
    ~/.cache/selfmm/sha256.json, keyed by resolved path and valid while size and modification
    times are unchanged.
    """
    path = Path(path).resolve()
    files = _files(path)
    stamp = [[str(f.relative_to(path)) if f != path else "", f.stat().st_size, f.stat().st_mtime_ns]
             for f in files]
    size = sum(s for _, s, _ in stamp)
    cache_file = _cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    hit = cache.get(str(path))
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return {"path": str(path), "bytes": size, "sha256": hit["sha256"]}
    digest = hashlib.sha256()
    for f in files:
        if f != path:  # a folder: the names count too, so renamed arrays differ
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    result = {"path": str(path), "bytes": size, "sha256": digest.hexdigest()}
    cache[str(path)] = {"stamp": stamp, "sha256": result["sha256"]}
    try:
        write_json(cache_file, cache)
    except Exception:  # noqa: BLE001 - an optimisation: a read-only home costs a rehash, no more
        pass
    return result


def data_provenance(path: str, overrides: dict[str, str]) -> dict[str, Any]:
    """The digest of the data file and of each override file (text_file, audio_file, ...)."""
    return {"file": file_digest(path), **{arg: file_digest(p) for arg, p in overrides.items()}}


def record(device: torch.device | str, data_path: str, overrides: dict[str, str],
           invocation: str) -> dict[str, Any]:
    """What a run records: environment, data digests and how it was started."""
    return {**environment(device), "invocation": invocation,
            "data": data_provenance(data_path, overrides)}


def differences(recorded: dict[str, Any] | None, data_path: str, overrides: dict[str, str]) -> list[str]:
    """What changed since the run was made: the data's bytes, selfmm's or a main package's
    version. Empty for runs without provenance (imported or older)."""
    if not recorded:
        return []
    found = []
    now = data_provenance(data_path, overrides)
    for key, then in (recorded.get("data") or {}).items():
        if key in now and then.get("sha256") != now[key]["sha256"]:
            found.append(f"{now[key]['path']} is not the file the run used "
                         f"(sha256 {now[key]['sha256'][:12]}, the run's {str(then.get('sha256'))[:12]})")
    versions = {"selfmm": __version__, **{name: _version(name) for name in PACKAGES}}
    for name, version in versions.items():
        if name in recorded and recorded[name] != version:
            found.append(f"{name} {version}, the run's {recorded[name]}")
    return found
