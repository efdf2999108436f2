"""Synthetic test media written with PyAV: moving shapes, a drawn face, a tone or silence."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import numpy as np

AUDIO_RATE = 16_000


def draw_face(img: np.ndarray, cx: int, cy: int, size: int) -> None:
    """A frontal, lit, cartoon face: skin ellipse, dark brows and eyes, a nose shadow, a mouth."""
    import cv2

    s = size
    cv2.ellipse(img, (cx, cy), (int(s * 0.42), int(s * 0.55)), 0, 0, 360, (150, 180, 225), -1)
    for side in (-1, 1):
        ex = cx + side * int(s * 0.18)
        ey = cy - int(s * 0.12)
        cv2.ellipse(img, (ex, ey - int(s * 0.1)), (int(s * 0.1), int(s * 0.025)), 0, 0, 360,
                    (40, 40, 60), -1)
        cv2.ellipse(img, (ex, ey), (int(s * 0.08), int(s * 0.045)), 0, 0, 360, (30, 30, 30), -1)
    cv2.ellipse(img, (cx, cy + int(s * 0.08)), (int(s * 0.05), int(s * 0.1)), 0, 0, 360,
                (120, 145, 190), -1)
    cv2.ellipse(img, (cx, cy + int(s * 0.3)), (int(s * 0.16), int(s * 0.05)), 0, 0, 360,
                (60, 60, 140), -1)


def frame_image(i: int, n: int, width: int, height: int, face: bool) -> np.ndarray:
    """Frame i of n: a grey gradient background with a moving square and circle (BGR uint8)."""
    import cv2

    img = np.empty((height, width, 3), np.uint8)
    img[:] = np.linspace(60, 120, width, dtype=np.uint8)[None, :, None]
    t = i / max(n - 1, 1)
    x = int(10 + t * (width - 40))
    cv2.rectangle(img, (x, 10), (x + 20, 30), (0, 0, 255), -1)
    cv2.circle(img, (width - x, height - 20), 12, (255, 200, 0), -1)
    if face:
        draw_face(img, width // 2 + int(6 * np.sin(2 * np.pi * t)), height // 2, height // 2)
    return img


def tone(seconds: float, freq: float = 220.0, amplitude: float = 0.3, seed: int = 0) -> np.ndarray:
    """A voiced-like test signal: a tone with two harmonics, vibrato and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    phase = 2 * np.pi * freq * t + 2.0 * np.sin(2 * np.pi * 3 * t)
    y = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)
    y = amplitude * y / 1.75 + 0.01 * rng.standard_normal(t.size)
    return y.astype(np.float32)


def make_video(
    path: str | Path,
    *,
    seconds: float = 1.5,
    fps: int = 15,
    width: int = 192,
    height: int = 144,
    audio: str | None = "tone",
    face: bool = False,
    freq: float = 220.0,
    video: bool = True,
) -> Path:
    """Write an H.264 video (mp4/mkv by suffix) with an AAC track: "tone", "silent" or None.

    With video=False only the audio track is written."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * fps)
    with av.open(str(path), "w") as out:
        if video:
            vs = out.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            vs.options = {"preset": "ultrafast"}
        astream = None
        if audio is not None:
            astream = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        for i in range(n if video else 0):
            frame = av.VideoFrame.from_ndarray(frame_image(i, n, width, height, face), "bgr24")
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode() if video else ():
            out.mux(packet)
        if astream is not None:
            wave = tone(seconds, freq) if audio == "tone" else np.zeros(
                int(seconds * AUDIO_RATE), np.float32)
            chunk = 1024
            for start in range(0, wave.size, chunk):
                block = wave[start : start + chunk][None]
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
                frame.sample_rate = AUDIO_RATE
                frame.pts = start
                frame.time_base = Fraction(1, AUDIO_RATE)
                for packet in astream.encode(frame):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)
    return path


def astronaut() -> np.ndarray:
    """A real face nobody drew: scikit-image's astronaut photo (512 x 512 RGB, Eileen Collins,
    NASA, public domain), the face about 95 pixels wide around ASTRONAUT_FACE."""
    from skimage import data

    return data.astronaut()


ASTRONAUT_FACE = (224.0, 122.0)  # about the face's centre in the photo, pixels


def place_face(photo: np.ndarray, width: int, height: int, x: float, y: float, angle: float = 0.0,
               scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A width x height RGB frame showing `photo` turned by `angle` degrees (counter-clockwise on
    screen) and scaled by `scale` about ASTRONAUT_FACE, which lands at (x, y); and the (2, 3)
    affine map from photo to frame pixels."""
    import cv2

    matrix = cv2.getRotationMatrix2D(ASTRONAUT_FACE, angle, scale)
    matrix[:, 2] += np.array([x, y]) - np.array(ASTRONAUT_FACE)
    frame = cv2.warpAffine(photo, matrix, (width, height), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    return frame, matrix


def face_path(u: float, width: int, height: int) -> tuple[float, float, float, float]:
    """x, y (pixels), angle (degrees) and scale at u in [0, 1]: across the frame and back, up
    and down, turned up to 25 degrees either way, scaled 0.8 to 1.25."""
    return (width * (0.5 + 0.15 * np.sin(2 * np.pi * u)), height * (0.5 - 0.08 * np.sin(np.pi * u)),
            25 * np.sin(2 * np.pi * u), 1.0 + 0.25 * np.sin(np.pi * u) - 0.2 * np.sin(2 * np.pi * u) ** 2)


def moving_face(width: int, height: int, n: int = 30, still: int = 3):
    """(frames, truth): `still` frames at the path's start (a reference), then the astronaut's
    face along face_path in n steps (with n = 30 at most 5.4 degrees of turn per frame); truth
    per frame: x, y, angle, scale and the photo-to-frame matrix."""
    photo = astronaut()
    frames, truth = [], []
    for u in [0.0] * still + list(np.linspace(0, 1, n + 1)[1:]):
        x, y, angle, scale = face_path(u, width, height)
        frame, matrix = place_face(photo, width, height, x, y, angle, scale)
        frames.append(frame)
        truth.append((x, y, angle, scale, matrix))
    return frames, truth


def write_frames(path: str | Path, frames: list[np.ndarray], fps: int = 10, rotation: int = 0) -> Path:
    """RGB frames as an H.264 video without audio; `rotation`: the display matrix's turn
    (degrees counter-clockwise), as a phone writes it."""
    import av

    path = Path(path)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        if rotation:
            stream.set_display_rotation(rotation)
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), "rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_raw_h264(path: str | Path, seconds: float, fps: int, size: int = 32) -> Path:
    """An elementary H.264 stream (.h264): no container, so no duration and no timestamps."""
    import av

    path = Path(path)
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(int(seconds * fps)):
            image = np.full((size, size, 3), i % 250, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, "bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_corrupt(path: str | Path, source: Path | None = None, seed: int = 0) -> Path:
    """Random bytes, or `source` truncated to its first quarter with its header scrambled."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    if source is None:
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        data = bytearray(Path(source).read_bytes()[: Path(source).stat().st_size // 4])
        data[:64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
    return path


def make_cut(path: str | Path, source: Path, fraction: float = 0.5) -> Path:
    """`source` cut after `fraction` of its bytes, as an interrupted download or copy leaves it."""
    data = Path(source).read_bytes()
    path = Path(path)
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def extracted_run(root: Path, rows: list[dict[str, str]], text_model: Path, *, seed: int,
                  epochs: int) -> tuple[Path, Path]:
    """MMSA's label.csv for `rows` (the videos already under root/Raw/<video_id>/<clip_id>.mp4),
    its feature file from `selfmm extract-dataset`, and a one-seed run trained on it:
    (feature file, run directory)."""
    from selfmm.cli import main

    with open(root / "label.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    feats, run = root / "feats.pkl", root / "run"
    assert main(["extract-dataset", str(root / "Raw"), "--labels", str(root / "label.csv"), "--out", str(feats),
                 "--workers", "1", "--no-progress", "--text-model", str(text_model)]) == 0
    assert main(["train", "--dataset", "mosi", "--data", str(feats), "--out", str(run), "--text-model",
                 str(text_model), "--seeds", str(seed), "--max-epochs", str(epochs), "--set", "batch_size=4",
                 "--device", "cpu"]) == 0
    return feats, run
