"""Speech nobody typed in: espeak-ng (a Debian package) speaking known text, and tones for music.

Every helper gives mono float32 samples at 16 kHz, the rate selfmm decodes audio to.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np

RATE = 16_000
ESPEAK = shutil.which("espeak-ng")
# Sentences for the word error rate (tests/test_speech.py) and the speed figures (benchmarks/).
SENTENCES = [
    "I really loved this movie and I would watch it again.",
    "The acting was terrible and the story made no sense.",
    "She said the food at the restaurant was very good.",
    "We walked to the park on a sunny afternoon.",
    "The ending of the film was a big disappointment.",
    "My brother bought a new car last week.",
    "Please open the window because it is hot in here.",
    "The music in this show is beautiful and calm.",
    "He never answers the phone when I call him.",
    "This is the best book I have read all year.",
    "The children played football in the garden until dark.",
    "I am not sure that this plan will work.",
]


def say(text: str, voice: str = "en-us", speed: int = 160, trim: bool = False) -> np.ndarray:
    """`text` spoken by espeak-ng; `trim`: without the silence before and after the sound (the
    samples whose magnitude stays under 1 % of full scale)."""
    from scipy.signal import resample_poly

    out = subprocess.run([ESPEAK, "-v", voice, "-s", str(speed), "--stdout", text],
                         capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(out)) as handle:
        rate = handle.getframerate()
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), np.int16)
    step = Fraction(RATE, rate)
    samples = resample_poly(pcm.astype(np.float64) / 32768, step.numerator, step.denominator)
    if trim:
        loud = np.flatnonzero(np.abs(samples) > 0.01)
        samples = samples[loud[0]: loud[-1] + 1]
    return samples.astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * RATE)), np.float32)


def word_by_word(sentence: str, gaps: tuple[float, ...] = (0.25, 0.35, 0.45),
                 lead: float = 0.3) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Each word of `sentence` spoken on its own, trimmed, with known silences between them:
    the samples and each word's true (word, start, end) in seconds."""
    parts, truth, t = [silence(lead)], [], lead
    for i, word in enumerate(sentence.split()):
        sound = say(word, trim=True)
        truth.append((word, t, t + sound.size / RATE))
        gap = silence(gaps[i % len(gaps)])
        parts += [sound, gap]
        t += (sound.size + gap.size) / RATE
    return np.concatenate(parts), truth


def chord(seconds: float = 3.0, freqs: tuple[float, ...] = (261.63, 329.63, 392.0)) -> np.ndarray:
    """A sustained C major chord with a slow tremolo."""
    t = np.arange(int(seconds * RATE)) / RATE
    y = sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)
    return (0.3 * y * (0.8 + 0.2 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def melody(notes: tuple[float, ...] = (261.63, 293.66, 329.63, 349.23, 392.0, 440.0, 493.88, 523.25),
           note_seconds: float = 0.4) -> np.ndarray:
    """A scale of plucked-sounding notes (each with two harmonics and a decay)."""
    t = np.arange(int(note_seconds * RATE)) / RATE
    envelope = np.exp(-4 * t)
    return np.concatenate([
        (0.3 * envelope * (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t))).astype(np.float32)
        for f in notes
    ])


def speech_video(path: str | Path, samples: np.ndarray, *, fps: int = 5, width: int = 96,
                 height: int = 72, image: np.ndarray | None = None) -> Path:
    """An H.264 + AAC video: `samples` as its sound, a still frame (grey, or `image`, RGB uint8
    of (height, width, 3)) as its picture, as long as the sound."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = image if image is not None else np.full((height, width, 3), 128, np.uint8)
    frames = max(1, int(np.ceil(samples.size / RATE * fps)))
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = out.add_stream("aac", rate=RATE, layout="mono")
        for _ in range(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, "rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        for start in range(0, samples.size, 1024):
            block = av.AudioFrame.from_ndarray(samples[None, start: start + 1024], format="fltp", layout="mono")
            block.sample_rate, block.pts, block.time_base = RATE, start, Fraction(1, RATE)
            for packet in audio.encode(block):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return path


# --- what the recogniser hears, measured (tests/test_speech.py and benchmarks/speech.py) --------

# Sentences spoken word by word with known gaps, for the word centres.
ONE_BY_ONE = [
    "please open the window now",
    "my brother bought a new car",
    "the children played in the garden",
    "this is the best book ever",
    "we walked to the park today",
]


def words_of(text: str) -> str:
    from selfmm.extract.align import normalise

    return " ".join(filter(None, (normalise(w) for w in text.split())))


def word_error_rate(recogniser) -> tuple[float, list]:
    """The word error rate over SENTENCES, each spoken whole; and the transcripts."""
    import jiwer

    heard = [recogniser.transcribe(say(s)) for s in SENTENCES]
    return jiwer.wer([words_of(s) for s in SENTENCES], [words_of(t.text) for t in heard]), heard


def centre_errors(recogniser) -> tuple[list[float], int, int]:
    """ONE_BY_ONE's words spoken one by one with known gaps: for each word matched to the
    recognised words, how far (seconds) its aligned span's centre is from the true centre; and
    the words matched, of all."""
    from selfmm.extract.align import MATCHED, align_words

    errors, matched, total = [], 0, 0
    for sentence in ONE_BY_ONE:
        samples, truth = word_by_word(sentence)
        heard = recogniser.transcribe(samples).words
        spans = align_words([w for w, _, _ in truth], heard, samples.size / RATE)
        for span, (_, start, end) in zip(spans, truth, strict=True):
            total += 1
            if span.how == MATCHED:
                matched += 1
                errors.append(abs((span.start + span.end) / 2 - (start + end) / 2))
    return errors, matched, total

