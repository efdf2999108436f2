"""`selfmm cache FILE`: a feature file as a folder of .npy arrays that later runs memory-map.

Unpickling MOSEI reads and holds every byte of the file; a cache opens in a fraction of a
second, and the operating system reads only the pages of the clips a run touches (and shares
them between processes). `load_features` opens a cache folder wherever it accepts a pickle.

Layout of FILE.selfmm-cache/:
  <split>.<key>.npy       one array per split and key, MMSA's key names, as validated
  <split>.strings.json    {"id": [...], "raw_text": [...], "extraction_flags": [...], "speech": [...]}
  manifest.json           format, version, source, shapes and dtypes, the repairs made, the
                          file's `extraction` entry (its audio feature set) when it has one

The folder is built under a temporary name beside OUT and renamed into place when complete,
so a folder named OUT is always a whole cache (older versions wrote in place and marked a
complete cache by writing the manifest last).

The cache holds what `load_features` validated and repaired (non-finite audio/vision values
already set to 0), so opening it skips the full scan for NaN and infinities, which would read
every page. Labels and lengths are small and are read into memory; the 3-d arrays are mapped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError, SelfMMError
from ..io import atomic_folder, atomic_writer, write_json
from ..rundir import OutputLock
from .layout import EXTRACTION_KEY, SPLITS, UNIMODAL_KEYS, UNKNOWN_FEATURES

if TYPE_CHECKING:
    from .types import FeatureData, Split

MANIFEST = "manifest.json"
FORMAT = "selfmm-cache"
VERSION = 1
MAPPED = ("text_bert", "audio", "vision")  # the bulk of a file; everything else is small


def is_cache(path: str | os.PathLike) -> bool:
    return Path(path).is_dir()


def default_out(source: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(source)}.selfmm-cache")


def _split_arrays(split: Split, aligned: bool) -> dict[str, np.ndarray]:
    """One split's arrays under MMSA's key names, ready for `_build_split` to validate again."""
    arrays = {"text_bert": split.text_bert, "audio": split.audio, "vision": split.vision,
              "regression_labels": split.labels}
    if not aligned:
        # An aligned file carries no lengths: the loader derives them from the text mask.
        arrays["audio_lengths"] = split.audio_lengths
        arrays["vision_lengths"] = split.vision_lengths
    for short, key in UNIMODAL_KEYS.items():
        if short in split.unimodal_labels:
            arrays[key] = split.unimodal_labels[short]
    return arrays


def write_cache(data: FeatureData, out: str | os.PathLike | None = None, *,
                force: bool = False) -> Path:
    """Write the cache folder of loaded, validated `data`; returns the folder.

    The folder is built beside `out` and takes its place only when complete (selfmm.io's
    atomic_folder), under `out`'s lock: an interruption or a full disk leaves `out` as it was,
    and two writers cannot mix their arrays."""
    source = data.path
    out = Path(out) if out is not None else default_out(source)
    if Path(source).resolve() == out.resolve():
        raise SelfMMError(f"{source} is already a cache")
    with OutputLock(out, f"cache {out}"):
        if (out / MANIFEST).exists() and not force:
            raise SelfMMError(f"{out} already holds a cache; pass `force=True` to rewrite it")
        with atomic_folder(out) as building:
            _write_arrays(data, building)
    return out


def _write_npy(handle: Any, arr: np.ndarray) -> None:
    """`arr` in the .npy format. Not np.save: its C-level write reports a full disk as an
    OSError without errno ("N requested and M written"), which cannot be told from a bug."""
    np.lib.format.write_array_header_1_0(handle, np.lib.format.header_data_from_array_1_0(arr))
    handle.write(memoryview(arr).cast("B"))


def _write_arrays(data: FeatureData, out: Path) -> None:
    splits: dict[str, dict[str, Any]] = {}
    for name in SPLITS:
        split = data.splits[name]
        entry: dict[str, Any] = {}
        for key, arr in _split_arrays(split, data.aligned).items():
            arr = np.ascontiguousarray(arr)
            with atomic_writer(out / f"{name}.{key}.npy", "wb") as handle:
                _write_npy(handle, arr)
            entry[key] = {"shape": list(arr.shape), "dtype": arr.dtype.str}
        strings = {"id": split.ids, "raw_text": split.raw_text, "extraction_flags": split.flags}
        if any(split.speech):
            strings["speech"] = [json.dumps(r, ensure_ascii=False) if r else "" for r in split.speech]
        write_json(out / f"{name}.strings.json", strings)
        splits[name] = entry
    manifest = {
        "format": FORMAT, "version": VERSION, "source": os.path.abspath(data.path),
        "source_bytes": os.path.getsize(data.path), "aligned": data.aligned,
        "repairs": data.repairs, "splits": splits,
    }
    recorded = {key: name for key, name in (("audio_features", data.audio_features),
                                            ("visual_features", data.visual_features))
                if name != UNKNOWN_FEATURES}
    if recorded:
        manifest[EXTRACTION_KEY] = recorded
    write_json(out / MANIFEST, manifest)


def _check_manifest(root: Path, manifest: Any, splits: tuple[str, ...]) -> None:
    """A cache folder may come from a stranger: refuse a manifest of any other shape."""
    def ok_meta(meta: Any) -> bool:
        return (isinstance(meta, dict) and isinstance(meta.get("dtype"), str)
                and isinstance(meta.get("shape"), list)
                and all(isinstance(n, int) and n >= 0 for n in meta["shape"]))

    try:
        fine = (isinstance(manifest["repairs"], list)
                and all(isinstance(manifest["splits"][name], dict) for name in splits)
                and all(isinstance(key, str) and key.isidentifier() and ok_meta(meta)
                        for name in splits for key, meta in manifest["splits"][name].items()))
    except (KeyError, TypeError):
        fine = False
    if not fine:
        raise DataError(f"{root}/{MANIFEST}: malformed manifest (a damaged or forged cache); "
                        "rebuild it with `selfmm cache FILE`")


def read_cache(path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The split dicts of a cache folder (3-d arrays memory-mapped, read-only) and its repairs;
    the file's EXTRACTION_KEY entry comes beside the splits, as in a pickle."""
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise DataError(f"{root}: a folder without {MANIFEST}: not a selfmm cache, or an unfinished "
                        "one (run `selfmm cache FILE` again)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{root}/{MANIFEST}: unreadable: {exc}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{root}/{MANIFEST}: malformed manifest (not a JSON object)")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(f"{root}: cache format {manifest.get('format')!r} version "
                        f"{manifest.get('version')!r}, expected {FORMAT!r} version {VERSION}")
    _check_manifest(root, manifest, SPLITS)
    layout: dict[str, dict[str, Any]] = {}
    for name in SPLITS:
        raw: dict[str, Any] = {}
        for key, meta in manifest["splits"][name].items():
            file = root / f"{name}.{key}.npy"
            try:
                arr = np.load(file, mmap_mode="r" if key in MAPPED else None, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DataError(f"{file}: unreadable cache array: {exc}") from None
            if list(arr.shape) != meta["shape"] or arr.dtype.str != meta["dtype"]:
                raise DataError(f"{file}: holds {arr.dtype.str} {list(arr.shape)}, but the manifest "
                                f"says {meta['dtype']} {meta['shape']} (a damaged cache)")
            # A plain ndarray view over the mapping: code downstream need not know np.memmap.
            raw[key] = np.asarray(arr)
        try:
            strings = json.loads((root / f"{name}.strings.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{root}/{name}.strings.json: unreadable: {exc}") from None
        raw.update(strings)  # id, raw_text, extraction_flags, speech
        layout[name] = raw
    if EXTRACTION_KEY in manifest:
        layout[EXTRACTION_KEY] = manifest[EXTRACTION_KEY]
    return layout, list(manifest["repairs"])
