"""Scoring new videos end to end: media made here -> extract-dataset -> train -> predict."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("av")
pytest.importorskip("librosa")
pytest.importorskip("cv2")
pytest.importorskip("opensmile")
pytest.importorskip("ai_edge_litert")

import selfmm  # noqa: E402
from media import extracted_run, make_corrupt, make_video  # noqa: E402
from selfmm.cli import main  # noqa: E402
from selfmm.errors import SelfMMError  # noqa: E402
from selfmm.predict import neutral_band, parse_input, sentiment_class  # noqa: E402
from selfmm.runs import best_seed_dir  # noqa: E402

SECONDS = 1.0
WORDS = {1: "a wonderful, great and happy film", -1: "a terrible, boring and sad film"}
FIELDS = {"input", "split", "id", "score", "sentiment", "text", "audio", "vision", "flags", "transcript", "speech"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    """12 clips (face or shapes; pitch and loudness follow the label a little), a feature file,
    and a one-seed run trained on it for 2 epochs."""
    root = tmp_path_factory.mktemp("predict")
    rows = []
    for i in range(12):
        sign = 1 if i % 3 else -1
        label = sign * (0.5 + (i % 4) * 0.6)
        make_video(root / "Raw" / f"vid{i}" / "0.mp4", seconds=SECONDS, face=i % 2 == 0,
                   freq=260.0 + 40.0 * label)
        mode = "train" if i < 8 else "valid" if i < 10 else "test"
        rows.append({"video_id": f"vid{i}", "clip_id": "0", "text": WORDS[sign],
                     "label": f"{label:.2f}", "mode": mode})
    feats, run = extracted_run(root, rows, tiny_bert, seed=1, epochs=2)
    new_clip = make_video(root / "new_clip.mp4", seconds=SECONDS, face=True, freq=330.0)
    return {"root": root, "feats": feats, "run": run, "new_clip": new_clip}


def predict_json(capsys, *argv: str) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", *argv, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def fails(capsys, *argv: str) -> str:
    """Run `selfmm predict ...`, expect exit 2 and return the one stderr line."""
    capsys.readouterr()
    assert main(["predict", *argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("selfmm: error: ")
    return err[0]


def check_score(row: dict) -> None:
    assert set(row) == FIELDS
    for key in ("score", "text", "audio", "vision"):
        assert isinstance(row[key], float) and math.isfinite(row[key])
    assert row["sentiment"] == sentiment_class(row["score"], 0.3)


def test_new_video(trained, capsys):
    out = predict_json(capsys, "--run", str(trained["run"]), str(trained["new_clip"]),
                       "--transcript", "what a great and happy day")
    assert len(out) == 1
    check_score(out[0])
    assert out[0]["id"] == "new_clip$_$0" and out[0]["split"] == "video"
    assert out[0]["flags"] == []  # a tone and a detectable drawn face


def test_feature_files_and_splits(trained, capsys, tiny_bert):
    run, feats = str(trained["run"]), str(trained["feats"])
    everything = predict_json(capsys, "--run", run, feats)
    assert [r["split"] for r in everything] == ["train"] * 8 + ["valid"] * 2 + ["test"] * 2
    assert [r["id"] for r in everything[:2]] == ["vid0$_$0", "vid1$_$0"]
    for row in everything:
        check_score(row)
    # Shapes-only clips carry the no_face flag from extraction.
    assert everything[1]["flags"] == ["no_face"] and everything[0]["flags"] == []
    test = predict_json(capsys, "--run", run, f"{feats}:test")
    assert test == everything[-2:]
    assert predict_json(capsys, "--run", run, feats, "--split", "valid") == everything[8:10]
    cache = trained["root"] / "feats.cache"
    assert main(["cache", feats, "--out", str(cache)]) == 0
    cached = predict_json(capsys, "--run", run, f"{cache}:test")
    assert [{**r, "input": feats} for r in cached] == everything[-2:]

    # A file from `selfmm extract` scores like the same video given directly.
    clip = trained["root"] / "clip.pkl"
    assert main(["extract", str(trained["new_clip"]), "--transcript", "a good day",
                 "--out", str(clip), "--text-model", str(tiny_bert)]) == 0
    from_file = predict_json(capsys, "--run", run, str(clip))
    direct = predict_json(capsys, "--run", run, str(trained["new_clip"]), "--transcript", "a good day")
    assert len(from_file) == 1 and from_file[0]["split"] == "test"
    assert from_file[0]["score"] == pytest.approx(direct[0]["score"], abs=1e-5)


def test_table_and_seed_directory(trained, capsys):
    seed_dir = trained["run"] / "seed-1"
    assert selfmm.load_run(trained["run"]).select().path == seed_dir
    capsys.readouterr()
    assert main(["predict", "--run", str(seed_dir), f"{trained['feats']}:test", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "score", "class", "text", "audio", "vision", "flags"]
    assert lines[1].startswith("vid10$_$0") and lines[-1].startswith("(class: neutral when -0.3 <")


def test_video_without_audio_track(trained, capsys):
    silent_film = make_video(trained["root"] / "no_track.mkv", seconds=SECONDS, face=True, audio=None)
    out = predict_json(capsys, "--run", str(trained["run"]), str(silent_film), "--transcript", "hello")
    check_score(out[0])
    assert out[0]["flags"] == ["no_audio"]


def test_user_errors(trained, capsys, tmp_path):
    run, clip = str(trained["run"]), str(trained["new_clip"])
    garbage = make_corrupt(tmp_path / "broken.mp4")
    assert str(garbage) in fails(capsys, "--run", run, str(garbage), "--transcript", "hi")
    assert "does not exist" in fails(capsys, "--run", str(tmp_path / "nope"), clip, "--transcript", "x")
    assert "1 video input(s) but 2 --transcript" in fails(capsys, "--run", run, clip, "--transcript", "a",
                                                          "--transcript", "b")
    assert "does not exist" in fails(capsys, "--run", run, str(tmp_path / "missing.mp4"), "--transcript", "x")
    assert "holds no seed 7" in fails(capsys, "--run", run, "--seed", "7", clip, "--transcript", "x")


def test_run_without_tokenizer(trained, capsys, tmp_path, tiny_bert):
    seed_dir = tmp_path / "seed-1"
    shutil.copytree(trained["run"] / "seed-1", seed_dir)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (seed_dir / "encoder" / name).unlink(missing_ok=True)
    args = ("--run", str(seed_dir), str(trained["new_clip"]), "--transcript", "nice")
    assert "--text-model" in fails(capsys, *args)
    assert len(predict_json(capsys, *args, "--text-model", str(tiny_bert))) == 1


def benchmark_style_run(seed_dir: Path, out: Path, tiny_bert: Path, audio_dim: int,
                        vision_dim: int) -> Path:
    """A copy of `seed_dir` whose model takes benchmark widths (untrained: only widths matter)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel

    from selfmm.configuration import from_dict
    from selfmm.model import SelfMM

    shutil.copytree(seed_dir, out)
    saved = json.loads((out / "config.json").read_text())
    saved["data"].update(audio_dim=audio_dim, vision_dim=vision_dim, audio_features="unknown")
    (out / "config.json").write_text(json.dumps(saved))
    torch.manual_seed(0)
    model = SelfMM(AutoModel.from_pretrained(tiny_bert), audio_dim, vision_dim,
                   from_dict(saved["config"]).model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "best.safetensors"))
    return out


def test_benchmark_run_refuses_extracted_features(trained, capsys, synth_path, tiny_bert, tmp_path):
    from selfmm.data.mmsa import load_features

    synth = load_features(synth_path("mosi", scale=0.03))
    run = benchmark_style_run(trained["run"] / "seed-1", tmp_path / "seed-1", tiny_bert,
                              synth.audio_dim, synth.vision_dim)
    capsys.readouterr()
    assert main(["predict", "--run", str(run), f"{synth.path}:test", "--json", "--device", "cpu"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(synth.splits["test"])
    for target in (str(trained["new_clip"]), str(trained["feats"])):
        extra = ("--transcript", "x") if target.endswith(".mp4") else ()
        message = fails(capsys, "--run", str(run), target, *extra)
        assert "audio features are 25 wide" in message and "5-wide" in message
        assert "benchmark-style features" in message


def test_clips_of_another_audio_set_are_refused(trained, capsys, tmp_path, tiny_bert):
    run = str(trained["run"])
    saved = json.loads((trained["run"] / "seed-1" / "config.json").read_text())
    assert saved["data"]["audio_features"] == "egemaps"
    for name in ("compare", "librosa"):
        clip = tmp_path / f"{name}.pkl"
        assert main(["extract", str(trained["new_clip"]), "--transcript", "a good day", "--out", str(clip),
                     "--text-model", str(tiny_bert), "--audio-features", name]) == 0
        message = fails(capsys, "--run", run, str(clip))
        assert f"audio features are {name}, but the run" in message
        assert "trained on egemaps audio features" in message and "--audio-features egemaps" in message
    # Refused by name even where the widths agree.
    import pickle

    egemaps = tmp_path / "egemaps.pkl"
    assert main(["extract", str(trained["new_clip"]), "--transcript", "a good day", "--out", str(egemaps),
                 "--text-model", str(tiny_bert)]) == 0
    with open(egemaps, "rb") as handle:
        data = pickle.load(handle)
    data["extraction"]["audio_features"] = "compare"
    relabelled = tmp_path / "relabelled.pkl"
    with open(relabelled, "wb") as handle:
        pickle.dump(data, handle)
    assert "audio features are compare, but the run" in fails(capsys, "--run", run, str(relabelled))
    # A video is extracted with the run's set; another one is refused before extracting.
    message = fails(capsys, "--run", run, str(trained["new_clip"]), "--transcript", "x",
                    "--audio-features", "compare")
    assert "audio features compare asked for" in message and "trained on egemaps" in message
    assert len(predict_json(capsys, "--run", run, str(trained["new_clip"]), "--transcript", "x",
                            "--audio-features", "egemaps")) == 1


def test_clips_of_another_visual_set_are_refused(trained, capsys, tmp_path, tiny_bert):
    run, video = str(trained["run"]), str(trained["new_clip"])
    saved = json.loads((trained["run"] / "seed-1" / "config.json").read_text())
    assert saved["data"]["visual_features"] == "mesh"
    clips = {}
    for name in ("haar", "mesh"):
        clips[name] = tmp_path / f"{name}.pkl"
        assert main(["extract", video, "--transcript", "a good day", "--out", str(clips[name]),
                     "--text-model", str(tiny_bert), "--visual-features", name]) == 0
    message = fails(capsys, "--run", run, str(clips["haar"]))
    assert "visual features are haar, but the run" in message and "--visual-features mesh" in message
    message = fails(capsys, "--run", run, video, "--transcript", "x", "--visual-features", "haar")
    assert "visual features haar asked for" in message and "trained on mesh" in message
    # A run from before the visual set was recorded was trained on haar faces: files of another
    # recorded set are refused by name, and its videos are extracted with haar (here 35 wide
    # against the run's 167: the width error).
    seed_dir = tmp_path / "seed-1"
    shutil.copytree(trained["run"] / "seed-1", seed_dir)
    del saved["data"]["visual_features"]
    (seed_dir / "config.json").write_text(json.dumps(saved))
    message = fails(capsys, "--run", str(seed_dir), str(clips["mesh"]))
    assert "visual features are mesh, but the run" in message and "trained on haar visual features" in message
    assert "vision features are 35 wide" in fails(capsys, "--run", str(seed_dir), video, "--transcript", "x")


def test_run_recording_no_audio_set(trained, capsys, tmp_path):
    """A run from before the set was recorded: feature files by widths, videos only once the
    set is named, and the named set's width must fit."""
    seed_dir = tmp_path / "seed-1"
    shutil.copytree(trained["run"] / "seed-1", seed_dir)
    saved = json.loads((seed_dir / "config.json").read_text())
    del saved["data"]["audio_features"]
    (seed_dir / "config.json").write_text(json.dumps(saved))
    run, video = str(seed_dir), str(trained["new_clip"])
    assert len(predict_json(capsys, "--run", run, f"{trained['feats']}:test")) == 2
    message = fails(capsys, "--run", run, video, "--transcript", "nice")
    assert "records no audio feature set" in message and "--audio-features egemaps" in message
    assert "audio features are 34 wide" in fails(capsys, "--run", run, video, "--transcript", "nice",
                                                 "--audio-features", "librosa")
    named = predict_json(capsys, "--run", run, video, "--transcript", "nice", "--audio-features", "egemaps")
    recorded = predict_json(capsys, "--run", str(trained["run"]), video, "--transcript", "nice")
    assert named == recorded


def test_classes_and_inputs(tmp_path):
    assert neutral_band("mosi") == pytest.approx(0.3) and neutral_band("sims") == pytest.approx(0.1)
    assert [sentiment_class(s, 0.3) for s in (-0.3, -0.29, 0.0, 0.3, 0.31)] == [
        "negative", "neutral", "neutral", "neutral", "positive"]
    pkl = tmp_path / "feats.bin"
    pkl.write_bytes(b"\x80\x04junk")
    assert parse_input(str(pkl)) == ("features", pkl, None)
    assert parse_input(f"{pkl}:valid") == ("features", pkl, "valid")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    assert parse_input(str(video))[0] == "video"
    with pytest.raises(SelfMMError, match="not to videos"):
        parse_input(f"{video}:test")


def test_best_seed_by_validation_loss(tmp_path):
    for seed, loss in ((1, 0.9), (2, 0.4), (3, float("nan"))):
        (tmp_path / f"seed-{seed}").mkdir()
        (tmp_path / f"seed-{seed}" / "metrics.json").write_text(json.dumps({"best_valid_loss": loss}))
    (tmp_path / "seed-4").mkdir()  # unfinished
    dirs = sorted(tmp_path.iterdir())
    assert best_seed_dir(dirs) == tmp_path / "seed-2"
    with pytest.raises(SelfMMError, match="no finished seed"):
        best_seed_dir([tmp_path / "seed-3", tmp_path / "seed-4"])
