"""A whole MMSA feature file from a folder of videos and MMSA's label.csv, resumable."""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..checks import checked
from ..configuration import check_workers
from ..data.layout import EXTRACTION_KEY, SPLITS
from ..encoder import load_tokenizer
from ..errors import DataError, SelfMMError
from ..io import atomic_writer, check_file, write_json
from ..pools import ignore_interrupts, stop
from ..rundir import RunDirectory
from .audio import DEFAULT_AUDIO_FEATURES, audio_set
from .clip import FLAGS, LENGTHS, empty_split, extract_media, extraction_metadata, flag_string, tokenize, write_pickle
from .media import check_dependencies
from .visual import VISION_DIM, VISION_FEATURES, VISION_FPS

EXTENSIONS = ("mp4", "avi", "mkv", "mov", "webm")
REQUIRED_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
UNIMODAL_COLUMNS = ("label_T", "label_A", "label_V")
# Bump when the features change: cached parts of another version are recomputed.
FEATURE_VERSION = "1"


@dataclass(frozen=True)
class LabelRow:
    video_id: str
    clip_id: str
    text: str
    label: float
    mode: str
    unimodal: dict[str, float]  # label_T/_A/_V when the file has them

    @property
    def id(self) -> str:
        return f"{self.video_id}$_${self.clip_id}"


@dataclass
class DatasetReport:
    out: Path
    counts: dict[str, int]  # rows written per split
    extracted: int  # clips computed in this run
    reused: int  # clips taken from OUT.parts/ of an earlier run
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, message)
    flag_counts: dict[str, int] = field(default_factory=dict)


def _float(value: str, path: Path, line: int, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}, line {line}: column {column!r} is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{path}, line {line}: column {column!r} is {value!r}, not a finite number")
    return number


def read_labels(path: str | os.PathLike) -> list[LabelRow]:
    """Parse MMSA's label.csv: video_id, clip_id, text, label, mode, optional label_T/_A/_V."""
    path = Path(path)
    check_file(path, "label file", "CSV file", DataError)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        try:
            rows = _parse_labels(path, reader)
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start} of a block); "
                            "a label.csv is a UTF-8 CSV file") from None
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.reader.line_num}: not a CSV row: {exc}") from None
    if not rows:
        raise DataError(f"{path}: no clips listed")
    return rows


def _parse_labels(path: Path, reader: csv.DictReader) -> list[LabelRow]:
    columns = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; an MMSA label.csv has "
            f"{', '.join(REQUIRED_COLUMNS)} (and optionally {', '.join(UNIMODAL_COLUMNS)})"
        )
    extra = [c for c in UNIMODAL_COLUMNS if c in columns]
    if extra and len(extra) != len(UNIMODAL_COLUMNS):
        raise DataError(
            f"{path}: has column(s) {', '.join(extra)} but not all of "
            f"{', '.join(UNIMODAL_COLUMNS)}; unimodal labels come as all three"
        )
    rows, seen = [], set()
    for line, rec in enumerate(reader, start=2):
        mode = (rec["mode"] or "").strip()
        if mode not in SPLITS:
            raise DataError(f"{path}, line {line}: mode {mode!r} is not one of {', '.join(SPLITS)}")
        row = LabelRow(
            video_id=(rec["video_id"] or "").strip(),
            clip_id=(rec["clip_id"] or "").strip(),
            text=rec["text"] or "",
            label=_float(rec["label"], path, line, "label"),
            mode=mode,
            unimodal={c: _float(rec[c], path, line, c) for c in extra},
        )
        if not row.video_id or not row.clip_id:
            raise DataError(f"{path}, line {line}: empty video_id or clip_id")
        if row.id in seen:
            raise DataError(f"{path}, line {line}: clip {row.id} appears twice")
        seen.add(row.id)
        rows.append(row)
    return rows


def find_video(video_dir: str | os.PathLike, video_id: str, clip_id: str) -> Path | None:
    """VIDEO_DIR/video_id/clip_id.EXT (MMSA's Raw layout) or VIDEO_DIR/video_id$_$clip_id.EXT."""
    video_dir = Path(video_dir)
    for stem in (Path(video_id) / clip_id, Path(f"{video_id}$_${clip_id}")):
        for ext in EXTENSIONS:
            for candidate in (video_dir / f"{stem}.{ext}", video_dir / f"{stem}.{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def _part_path(parts: Path, clip_id: str, audio_features: str) -> Path:
    """One part per clip and audio set: switching sets keeps the other set's parts."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", clip_id)[:80]
    return parts / f"{safe}-{hashlib.sha1(clip_id.encode()).hexdigest()[:10]}.{audio_features}.npz"


def _cache_key(video: Path, audio_features: str) -> str:
    stat = video.stat()
    return f"{FEATURE_VERSION}|{audio_features}|{video.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_part(part: Path, key: str | None = None) -> dict[str, np.ndarray] | None:
    """The cached part, or None when absent, unreadable or made from another file/version."""
    try:
        with np.load(part, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if key is not None and str(data.get("key")) != key:
        return None
    return data


def _extract_part(video: str, part: str, key: str, audio_features: str) -> str | None:
    """Worker: extract one clip into its part file. Returns None, or the failure message."""
    try:
        media = extract_media(video, audio_features)
    except SelfMMError as exc:
        return str(exc)
    except Exception as exc:  # a file that breaks a library must not stop the whole dataset
        return f"{video}: {type(exc).__name__}: {exc}"
    flags = np.array([media.flags[name] for name in FLAGS], dtype=bool)
    with atomic_writer(part, "wb") as handle:
        np.savez(handle, audio=media.audio, vision=media.vision, flags=flags, key=np.array(key))
    return None


def _worker_init() -> None:
    import cv2

    ignore_interrupts()
    cv2.setNumThreads(1)  # one process per core already


@checked(**LENGTHS)
def extract_dataset(
    video_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tokenizer_name: str = "minilm",
    workers: int | None = None,
    text_len: int = 50,
    audio_len: int | None = None,
    vision_len: int | None = None,
    progress: bool = True,
    strict: bool = False,
    audio_features: str = DEFAULT_AUDIO_FEATURES,
) -> DatasetReport:
    """Extract every clip of `labels_csv` and write an MMSA feature file at `out`.

    Each clip's frames are cached in OUT.parts/ as soon as they are computed, so a rerun after
    an interruption only extracts what is missing (a part is recomputed when its video's size
    or mtime changed). Audio and vision are padded to the longest clip of the whole dataset,
    or to audio_len / vision_len (longer clips truncated; audio_len counts frames of the
    acoustic set `audio_features`, 100 per second for egemaps and compare, 50 for librosa;
    each set keeps its own parts, so a run never mixes sets). A clip that cannot be decoded is
    left out and listed in the report; it is an error when every clip fails, or any with
    `strict`.
    """
    check_workers(workers)
    acoustic = audio_set(audio_features)
    check_dependencies((acoustic.module, acoustic.package))
    video_dir, out = Path(video_dir), Path(out)
    if not video_dir.is_dir():
        raise DataError(f"{video_dir}: no such video folder")
    rows = read_labels(labels_csv)
    tokenizer = load_tokenizer(tokenizer_name)  # before the long part: fail early
    # The parts folder is locked while in use (two extractions into one OUT would mix), and
    # temporary files that an interrupted run left in it are removed.
    with RunDirectory(f"{out}.parts", resume=True) as parts:
        failures: dict[str, str] = {}
        todo: list[tuple[LabelRow, Path, Path, str]] = []
        reused = 0
        for row in rows:
            video = find_video(video_dir, row.video_id, row.clip_id)
            if video is None:
                failures[row.id] = (
                    f"no video {row.video_id}/{row.clip_id}.<ext> or {row.id}.<ext> in {video_dir} "
                    f"(ext: {', '.join(EXTENSIONS)})"
                )
                continue
            key = _cache_key(video, acoustic.name)
            part = _part_path(parts, row.id, acoustic.name)
            if _read_part(part, key) is not None:
                reused += 1
            else:
                todo.append((row, video, part, key))

        _run(todo, failures, workers, progress, acoustic.name)

        ok = [row for row in rows if row.id not in failures]
        if not ok:
            listed = "; ".join(f"{i}: {m}" for i, m in list(failures.items())[:5])
            raise DataError(f"{labels_csv}: no clip could be extracted ({listed})")
        if strict and failures:
            listed = "; ".join(f"{i}: {m}" for i, m in failures.items())
            raise DataError(f"{len(failures)} clip(s) failed: {listed}")

        loaded = {row.id: _read_part(_part_path(parts, row.id, acoustic.name)) for row in ok}
        la = audio_len or max(1, max(p["audio"].shape[0] for p in loaded.values()))
        lv = vision_len or max(1, max(p["vision"].shape[0] for p in loaded.values()))
        unimodal = [c for c in UNIMODAL_COLUMNS if c in rows[0].unimodal]
        data, flag_counts = {}, dict.fromkeys(FLAGS, 0)
        for split in SPLITS:
            members = [row for row in ok if row.mode == split]
            data[split] = _split_arrays(members, loaded, tokenizer, text_len, la, lv, unimodal,
                                        acoustic.dim)
            for row in members:
                for name, value in zip(FLAGS, loaded[row.id]["flags"], strict=True):
                    flag_counts[name] += int(value)
        data[EXTRACTION_KEY] = extraction_metadata(acoustic.name)
        write_pickle(out, data)
        report = DatasetReport(
            out=out,
            counts={split: len(data[split]["id"]) for split in SPLITS},
            extracted=len(todo) - sum(1 for t in todo if t[0].id in failures),
            reused=reused,
            failures=sorted(failures.items()),
            flag_counts=flag_counts,
        )
        write_json(
            Path(f"{out}.json"),
            {
                "labels": str(labels_csv),
                "video_dir": str(video_dir),
                "text_model": tokenizer_name,
                "text_len": text_len,
                "audio_len": la,
                "vision_len": lv,
                "audio_fps": acoustic.fps,
                "vision_fps": VISION_FPS,
                "audio_feature_set": acoustic.name,
                "audio_features": list(acoustic.columns),
                "vision_features": list(VISION_FEATURES),
                "feature_version": FEATURE_VERSION,
                "counts": report.counts,
                "flag_counts": flag_counts,
                "failures": [{"id": i, "error": m} for i, m in report.failures],
            },
        )
        return report


def _run(todo, failures: dict[str, str], workers: int | None, progress: bool,
         audio_features: str) -> None:
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    bar = tqdm(total=len(todo), desc="extract", unit="clip", disable=not progress or not todo)
    try:
        if workers == 1:
            for row, video, part, key in todo:
                error = _extract_part(str(video), str(part), key, audio_features)
                if error:
                    failures[row.id] = error
                bar.update()
            return
        # spawn, not fork: the parent holds tokenizer and OpenCV threads that fork would copy.
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init)
        try:
            futures = {
                pool.submit(_extract_part, str(video), str(part), key, audio_features): row
                for row, video, part, key in todo
            }
            for future in as_completed(futures):
                error = future.result()
                if error:
                    failures[futures[future].id] = error
                bar.update()
        except BaseException:
            # Ctrl-C (or a failure): the finished clips are in their parts already; the
            # queued ones are dropped and the running ones cut short.
            stop(pool)
            raise
        pool.shutdown()
    finally:
        bar.close()


def _split_arrays(members, loaded, tokenizer, text_len, la, lv, unimodal,
                  audio_dim: int) -> dict[str, np.ndarray]:
    if not members:
        split = empty_split(text_len, la, lv, audio_dim)
        for column in unimodal:
            split[f"regression_labels_{column[-1]}"] = np.zeros(0, np.float32)
        return split
    n = len(members)
    audio = np.zeros((n, la, audio_dim), np.float32)
    vision = np.zeros((n, lv, VISION_DIM), np.float32)
    audio_lengths = np.zeros(n, np.int64)
    vision_lengths = np.zeros(n, np.int64)
    flags = []
    for i, row in enumerate(members):
        part = loaded[row.id]
        a, v = part["audio"][:la], part["vision"][:lv]
        audio[i, : len(a)] = a
        vision[i, : len(v)] = v
        audio_lengths[i], vision_lengths[i] = len(a), len(v)
        flags.append(flag_string(dict(zip(FLAGS, part["flags"].tolist(), strict=True))))
    split = {
        "text_bert": tokenize(tokenizer, [row.text for row in members], text_len),
        "audio": audio,
        "vision": vision,
        "audio_lengths": audio_lengths,
        "vision_lengths": vision_lengths,
        "regression_labels": np.array([row.label for row in members], np.float32),
        "id": np.array([row.id for row in members]),
        "raw_text": np.array([row.text for row in members]),
        "extraction_flags": np.array(flags),
    }
    for column in unimodal:
        split[f"regression_labels_{column[-1]}"] = np.array(
            [row.unimodal[column] for row in members], np.float32
        )
    return split
