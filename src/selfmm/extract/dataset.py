"""A whole MMSA feature file from a folder of videos and MMSA's label.csv, resumable."""

from __future__ import annotations

import csv
import hashlib
import json
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
from .clip import (
    FLAGS,
    GIVEN,
    LENGTHS,
    RECOGNISED,
    MediaFeatures,
    aligned_arrays,
    check_not_aligned,
    empty_split,
    extract_media,
    extraction_metadata,
    flag_string,
    speech_json,
    speech_record,
    tokenize,
    write_pickle,
)
from .media import check_dependencies
from .speech import SpeechSettings, Transcript, speech_settings
from .visual import DEFAULT_VISUAL_FEATURES, VISION_FPS, visual_set

EXTENSIONS = ("mp4", "avi", "mkv", "mov", "webm")
REQUIRED_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
UNIMODAL_COLUMNS = ("label_T", "label_A", "label_V")
# Bump when the features change: cached parts of another version are recomputed.
# 3: visual feature sets, the several_faces and dark flags, frames turned upright.
FEATURE_VERSION = "3"
# --transcribe: recognise the words of rows whose text is empty, or of every row.
TRANSCRIBE = ("empty", "all")


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
    text_sources: dict[str, int] = field(default_factory=dict)  # rows per text source: given, asr


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


def _part_path(parts: Path, clip_id: str, audio_features: str, visual_features: str) -> Path:
    """One part per clip and audio set: switching sets keeps the other set's parts."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", clip_id)[:80]
    digest = hashlib.sha1(clip_id.encode()).hexdigest()[:10]
    return parts / f"{safe}-{digest}.{audio_features}.{visual_features}.npz"


def _cache_key(video: Path, audio_features: str, visual_features: str) -> str:
    stat = video.stat()
    return (f"{FEATURE_VERSION}|{audio_features}|{visual_features}|{video.resolve()}|{stat.st_size}|"
            f"{stat.st_mtime_ns}")


def _read_part(part: Path, key: str | None = None, speech_key: str | None = None) -> dict[str, np.ndarray] | None:
    """The cached part, or None when absent, unreadable, made from another file/version, or
    (speech_key given) without words recognised by that model and language."""
    try:
        with np.load(part, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if key is not None and str(data.get("key")) != key:
        return None
    if speech_key is not None and str(data.get("speech_key")) != speech_key:
        return None
    return data


def _speech_key(speech: SpeechSettings) -> str:
    return f"{speech.model.sha256}|{speech.language or ''}"


def _extract_part(video: str, part: str, key: str, audio_features: str, visual_features: str,
                  speech: SpeechSettings | None = None) -> str | None:
    """Worker: extract one clip (with its words when `speech` is given) into its part file.
    Returns None, or the failure message."""
    try:
        media = extract_media(video, audio_features, speech=speech, visual_features=visual_features)
    except SelfMMError as exc:
        return str(exc)
    except Exception as exc:  # a file that breaks a library must not stop the whole dataset
        return f"{video}: {type(exc).__name__}: {exc}"
    flags = np.array([media.flags[name] for name in FLAGS], dtype=bool)
    words = "" if media.speech is None else json.dumps(media.speech.record(), ensure_ascii=False)
    with atomic_writer(part, "wb") as handle:
        np.savez(handle, audio=media.audio, vision=media.vision, flags=flags, key=np.array(key),
                 vision_times=media.vision_times, seconds=np.array(media.seconds),
                 speech=np.array(words), speech_key=np.array(_speech_key(speech) if speech else ""))
    return None


def _media(part: dict[str, np.ndarray], audio_features: str, visual_features: str) -> MediaFeatures:
    """A part's MediaFeatures again."""
    words = str(part["speech"])
    return MediaFeatures(
        audio=part["audio"], vision=part["vision"],
        flags=dict(zip(FLAGS, part["flags"].tolist(), strict=True)), audio_features=audio_features,
        visual_features=visual_features, vision_times=part["vision_times"], seconds=float(part["seconds"]),
        speech=Transcript.from_record(json.loads(words)) if words else None,
    )


def _worker_init() -> None:
    import cv2

    ignore_interrupts()
    cv2.setNumThreads(1)  # one process per core already


@dataclass(frozen=True)
class _Words:
    """Which rows need speech recognition, and whose text it gives."""

    transcribe: str | None  # None, "empty" or "all"
    aligned: bool

    def recognised_text(self, row: LabelRow) -> bool:
        return self.transcribe == "all" or (self.transcribe == "empty" and not row.text.strip())

    def needed(self, row: LabelRow) -> bool:
        return self.aligned or self.recognised_text(row)


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
    transcribe: str | None = None,
    aligned: bool = False,
    speech: SpeechSettings | None = None,
    visual_features: str = DEFAULT_VISUAL_FEATURES,
) -> DatasetReport:
    """Extract every clip of `labels_csv` and write an MMSA feature file at `out`.

    Each clip's frames are cached in OUT.parts/ as soon as they are computed, so a rerun after
    an interruption only extracts what is missing (a part is recomputed when its video's size
    or mtime changed). Audio and vision are padded to the longest clip of the whole dataset,
    or to audio_len / vision_len (longer clips truncated; audio_len counts frames of the
    acoustic set `audio_features`, 100 per second for egemaps and compare, 50 for librosa;
    faces are the visual set `visual_features`; each pair of sets keeps its own parts, so a run
    never mixes sets). A clip that cannot be decoded is
    left out and listed in the report; it is an error when every clip fails, or any with
    `strict`.

    `transcribe` "empty": the words of rows whose text is empty are recognised (the `asr`
    extra, model and language from `speech`, default the packaged tiny.en); "all": every
    row's, ignoring the given text. `aligned`: MMSA's aligned layout, text_len steps per clip
    (speech recognition times the words of every row; audio_len and vision_len do not apply).
    """
    check_workers(workers)
    check_not_aligned(aligned, audio_len=audio_len, vision_len=vision_len)
    if transcribe is not None and transcribe not in TRANSCRIBE:
        raise SelfMMError(f"transcribe must be None, 'empty' or 'all', got {transcribe!r}")
    acoustic = audio_set(audio_features)
    visual = visual_set(visual_features)
    check_dependencies((acoustic.module, acoustic.package), (visual.module, visual.package))
    video_dir, out = Path(video_dir), Path(out)
    if not video_dir.is_dir():
        raise DataError(f"{video_dir}: no such video folder")
    rows = read_labels(labels_csv)
    words = _Words(transcribe, aligned)
    if any(words.needed(row) for row in rows):
        speech = speech or speech_settings()
        speech.recogniser()  # loads and checks the model and the language: fail early
    else:
        speech = None
    speech_key = _speech_key(speech) if speech is not None else None
    tokenizer = load_tokenizer(tokenizer_name)  # before the long part: fail early
    # The parts folder is locked while in use (two extractions into one OUT would mix), and
    # temporary files that an interrupted run left in it are removed.
    with RunDirectory(f"{out}.parts", resume=True) as parts:
        failures: dict[str, str] = {}
        todo: list[tuple[LabelRow, Path, Path, str, SpeechSettings | None]] = []
        reused = 0
        for row in rows:
            video = find_video(video_dir, row.video_id, row.clip_id)
            if video is None:
                failures[row.id] = (
                    f"no video {row.video_id}/{row.clip_id}.<ext> or {row.id}.<ext> in {video_dir} "
                    f"(ext: {', '.join(EXTENSIONS)})"
                )
                continue
            key = _cache_key(video, acoustic.name, visual.name)
            part = _part_path(parts, row.id, acoustic.name, visual.name)
            need = words.needed(row)
            if _read_part(part, key, speech_key if need else None) is not None:
                reused += 1
            else:
                todo.append((row, video, part, key, speech if need else None))

        _run(todo, failures, workers, progress, acoustic.name, visual.name)

        ok = [row for row in rows if row.id not in failures]
        if not ok:
            listed = "; ".join(f"{i}: {m}" for i, m in list(failures.items())[:5])
            raise DataError(f"{labels_csv}: no clip could be extracted ({listed})")
        if strict and failures:
            listed = "; ".join(f"{i}: {m}" for i, m in failures.items())
            raise DataError(f"{len(failures)} clip(s) failed: {listed}")

        loaded = {row.id: _media(_read_part(_part_path(parts, row.id, acoustic.name, visual.name)),
                                 acoustic.name, visual.name)
                  for row in ok}
        for row in ok:
            if not words.needed(row):  # words an earlier run recognised are not this run's
                media = loaded[row.id]
                media.speech = None
                media.flags["no_speech"] = media.flags["asr_unsure"] = False
        if aligned:
            la = lv = text_len
        else:
            la = audio_len or max(1, max(m.audio.shape[0] for m in loaded.values()))
            lv = vision_len or max(1, max(m.vision.shape[0] for m in loaded.values()))
        unimodal = [c for c in UNIMODAL_COLUMNS if c in rows[0].unimodal]
        data, flag_counts = {}, dict.fromkeys(FLAGS, 0)
        sources = {GIVEN: 0, RECOGNISED: 0}
        for split in SPLITS:
            members = [row for row in ok if row.mode == split]
            data[split] = _split_arrays(members, loaded, tokenizer, text_len, la, lv, unimodal,
                                        acoustic.dim, visual.dim, words)
            for row in members:
                sources[RECOGNISED if words.recognised_text(row) else GIVEN] += 1
                for name in FLAGS:
                    flag_counts[name] += int(loaded[row.id].flags[name])
        data[EXTRACTION_KEY] = extraction_metadata(acoustic.name, visual.name)
        write_pickle(out, data)
        report = DatasetReport(
            out=out,
            counts={split: len(data[split]["id"]) for split in SPLITS},
            extracted=len(todo) - sum(1 for t in todo if t[0].id in failures),
            reused=reused,
            failures=sorted(failures.items()),
            flag_counts=flag_counts,
            text_sources=sources,
        )
        write_json(
            Path(f"{out}.json"),
            {
                "labels": str(labels_csv),
                "video_dir": str(video_dir),
                "text_model": tokenizer_name,
                "text_len": text_len,
                "aligned": aligned,
                "audio_len": la,
                "vision_len": lv,
                "audio_fps": acoustic.fps,
                "vision_fps": VISION_FPS,
                "audio_feature_set": acoustic.name,
                "visual_feature_set": visual.name,
                "audio_features": list(acoustic.columns),
                "vision_features": list(visual.columns),
                "feature_version": FEATURE_VERSION,
                "transcribe": transcribe,
                "speech_model": None if speech is None else {
                    "name": speech.model.name, "sha256": speech.model.sha256,
                    "path": str(speech.model.path), "language": speech.language},
                "text_sources": sources,
                "counts": report.counts,
                "flag_counts": flag_counts,
                "failures": [{"id": i, "error": m} for i, m in report.failures],
            },
        )
        return report


def _run(todo, failures: dict[str, str], workers: int | None, progress: bool,
         audio_features: str, visual_features: str) -> None:
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    bar = tqdm(total=len(todo), desc="extract", unit="clip", disable=not progress or not todo)
    try:
        if workers == 1:
            for row, video, part, key, speech in todo:
                error = _extract_part(str(video), str(part), key, audio_features, visual_features, speech)
                if error:
                    failures[row.id] = error
                bar.update()
            return
        # spawn, not fork: the parent holds tokenizer and OpenCV threads that fork would copy.
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init)
        try:
            futures = {
                pool.submit(_extract_part, str(video), str(part), key, audio_features, visual_features,
                            speech): row
                for row, video, part, key, speech in todo
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


def _split_arrays(members, loaded: dict[str, MediaFeatures], tokenizer, text_len, la, lv, unimodal,
                  audio_dim: int, vision_dim: int, words: _Words) -> dict[str, np.ndarray]:
    if not members:
        split = empty_split(text_len, la, lv, audio_dim, vision_dim, words.aligned)
        for column in unimodal:
            split[f"regression_labels_{column[-1]}"] = np.zeros(0, np.float32)
        return split
    n = len(members)
    audio = np.zeros((n, la, audio_dim), np.float32)
    vision = np.zeros((n, lv, vision_dim), np.float32)
    text_bert = np.zeros((n, 3, text_len), np.float32)
    audio_lengths = np.zeros(n, np.int64)
    vision_lengths = np.zeros(n, np.int64)
    flags, texts, records = [], [], []
    for i, row in enumerate(members):
        media = loaded[row.id]
        given = None if words.recognised_text(row) else row.text
        text = given if given is not None else media.speech.text
        record = speech_record(given, media.speech)
        if words.aligned:
            text_bert[i], audio[i], vision[i], record["aligned"] = aligned_arrays(media, text, tokenizer, text_len)
        else:
            a, v = media.audio[:la], media.vision[:lv]
            audio[i, : len(a)] = a
            vision[i, : len(v)] = v
            audio_lengths[i], vision_lengths[i] = len(a), len(v)
        texts.append(text)
        records.append(speech_json(record))
        flags.append(flag_string(media.flags))
    if not words.aligned:
        text_bert = tokenize(tokenizer, texts, text_len)
    split = {
        "text_bert": text_bert,
        "audio": audio,
        "vision": vision,
        "audio_lengths": audio_lengths,
        "vision_lengths": vision_lengths,
        "regression_labels": np.array([row.label for row in members], np.float32),
        "id": np.array([row.id for row in members]),
        "raw_text": np.array(texts),
        "extraction_flags": np.array(flags),
        "speech": np.array(records),
    }
    if words.aligned:  # the text mask gives every modality's length
        del split["audio_lengths"], split["vision_lengths"]
    for column in unimodal:
        split[f"regression_labels_{column[-1]}"] = np.array(
            [row.unimodal[column] for row in members], np.float32
        )
    return split
