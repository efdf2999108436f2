"""Word-aligned features: MMSA's aligned layout, one audio and one vision step per text token.

The field's aligned files were made with a forced aligner (P2FA): each word's acoustic and
visual frames averaged over the word's time span. Here the spans come from speech recognition:

1. The transcript's words (split at white space) are matched to the recognised words by
   sequence alignment (difflib's SequenceMatcher on lower-cased words stripped of punctuation).
   A matched word takes the recognised word's span. A run of given words facing a run of
   recognised words that differ (a substitution) takes the recognised run's time: one to one
   when the runs are equally long, else shared in proportion to the words' lengths in letters.
   Other given words are interpolated: shared out over the gap between their timed neighbours
   in proportion to their lengths, or, before the first and after the last timed word, placed
   beside it at the clip's own speaking rate (seconds per letter); with no recognised word at
   all, the whole clip is shared out.
2. Each token of the tokenizer takes the span of the word its first character belongs to, so
   all word pieces of a word share its span.
3. A token's audio (vision) step is the mean of the frames whose time (frame n of a set at
   `fps` frames per second: n / fps; a sampled video frame: its time stamp) lies in the span;
   a span holding no frame (a short word between two video frames) takes the frame nearest
   its centre; a clip without frames of a modality gives zeros. [CLS], [SEP] and padding
   positions are zero: they stand for no stretch of time, and the model reads no step past the
   text mask's length anyway.
"""

from __future__ import annotations

import bisect
import difflib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SelfMMError
from .speech import Word

MATCHED, SUBSTITUTED, INTERPOLATED = "matched", "substituted", "interpolated"
# The speaking rate used when a clip has no timed word to measure it: about 14 letters a second.
DEFAULT_SECONDS_PER_LETTER = 0.07


def normalise(word: str) -> str:
    """Lower case, compatibility forms, no punctuation (inner apostrophes kept: "don't")."""
    return re.sub(r"[^\w']+", "", unicodedata.normalize("NFKC", word).lower()).strip("'_")


@dataclass(frozen=True)
class WordSpan:
    text: str
    start: float
    end: float
    how: str  # MATCHED, SUBSTITUTED or INTERPOLATED

    def record(self) -> list:
        return [self.text, round(self.start, 3), round(self.end, 3), self.how]


def _letters(word: str) -> int:
    return max(1, len(normalise(word)))


def _share(words: Sequence[str], start: float, end: float) -> list[tuple[float, float]]:
    """[start, end] cut into consecutive spans in proportion to the words' lengths."""
    weights = np.array([_letters(w) for w in words], float)
    edges = start + (end - start) * np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def align_words(given: Sequence[str], recognised: Sequence[Word], duration: float) -> list[WordSpan]:
    """A time span for every word of `given` (see the module's docstring), within [0, duration]."""
    # Words that normalise to nothing ("-", "...") must not match one another.
    g = [normalise(w) or f"\0{i}" for i, w in enumerate(given)]
    r = [normalise(w.text) or f"\1{j}" for j, w in enumerate(recognised)]
    spans: list[tuple[float, float] | None] = [None] * len(given)
    how = [INTERPOLATED] * len(given)
    matcher = difflib.SequenceMatcher(None, g, r, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                spans[i] = (recognised[j].start, recognised[j].end)
                how[i] = MATCHED if op == "equal" else SUBSTITUTED
        elif op == "replace":
            spans[i1:i2] = _share(given[i1:i2], recognised[j1].start, recognised[j2 - 1].end)
            how[i1:i2] = [SUBSTITUTED] * (i2 - i1)
    timed = [i for i, s in enumerate(spans) if s is not None]
    if timed:
        letters = sum(_letters(given[i]) for i in timed)
        seconds = sum(spans[i][1] - spans[i][0] for i in timed)
        rate = seconds / letters if seconds > 0 else DEFAULT_SECONDS_PER_LETTER
    else:
        rate = DEFAULT_SECONDS_PER_LETTER
    i = 0
    while i < len(given):
        if spans[i] is not None:
            i += 1
            continue
        j = i
        while j < len(given) and spans[j] is None:
            j += 1
        run = given[i:j]
        width = rate * sum(_letters(w) for w in run)
        before = spans[i - 1][1] if i > 0 else None
        after = spans[j][0] if j < len(given) else None
        if before is None and after is None:
            start, end = 0.0, duration
        elif before is None:
            start, end = max(0.0, after - width), after
        elif after is None:
            start, end = before, max(before, min(duration, before + width))
        else:
            start, end = before, max(before, after)
        spans[i:j] = _share(run, start, end)
        i = j
    return [WordSpan(w, s[0], s[1], h) for w, s, h in zip(given, spans, how, strict=True)]


def text_words(text: str) -> list[tuple[str, int, int]]:
    """The words of `text` split at white space, with their character offsets."""
    return [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def tokens_with_spans(tokenizer, text: str, word_spans: Sequence[WordSpan],
                      text_len: int) -> tuple[np.ndarray, np.ndarray]:
    """text_bert (3, text_len) as `tokenize` gives it, and (text_len, 2) float spans: each token
    the span of the word holding its first character; NaN for [CLS], [SEP] and padding."""
    if not getattr(tokenizer, "is_fast", False):
        raise SelfMMError("aligned features need a fast tokenizer (character offsets per token); "
                          f"{type(tokenizer).__name__} is not one")
    enc = tokenizer([text], max_length=text_len, padding="max_length", truncation=True,
                    return_token_type_ids=True, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    text_bert = np.stack([np.asarray(enc[k][0], np.float32)
                          for k in ("input_ids", "attention_mask", "token_type_ids")])
    words = text_words(text)
    if len(words) != len(word_spans):
        raise ValueError(f"{len(word_spans)} word spans for {len(words)} words")
    starts = [start for _, start, _ in words]
    spans = np.full((text_len, 2), np.nan)
    for t, ((first, _), special, mask) in enumerate(zip(enc["offset_mapping"][0], enc["special_tokens_mask"][0],
                                                        enc["attention_mask"][0], strict=True)):
        if special or not mask:
            continue
        k = bisect.bisect_right(starts, first) - 1
        if k >= 0:
            spans[t] = (word_spans[k].start, word_spans[k].end)
    return text_bert, spans


def frame_means(frames: np.ndarray, times: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """(L, D) float32: row t the mean of the frames with spans[t, 0] <= time < spans[t, 1], the
    frame nearest the span's centre when none is inside, zeros where the span is NaN or there
    is no frame."""
    out = np.zeros((spans.shape[0], frames.shape[1]), np.float32)
    if frames.shape[0] == 0:
        return out
    times = np.asarray(times, float)
    for t, (start, end) in enumerate(spans):
        if np.isnan(start):
            continue
        inside = (times >= start) & (times < end)
        if inside.any():
            out[t] = frames[inside].mean(axis=0, dtype=np.float64)
        else:
            out[t] = frames[int(np.argmin(np.abs(times - (start + end) / 2)))]
    return out
