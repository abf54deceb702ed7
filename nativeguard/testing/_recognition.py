"""What a recognition client asked for, and the ``speech.phrase`` bodies that answer it.

The Speech SDK states its wishes in the websocket URL's query string
(``format=detailed``, ``profanity=masked``, ``wordLevelTimestamps=true``,
``lidEnabled=en-US,de-DE``) and in the ``speech.context`` message of each turn
(``phraseOutput``, ``phraseDetection.enrichment``, ``languageId``,
``pronunciationAssessment``); measured with SDK 1.53, it sends both. The
bodies built here follow the shapes the SDK parses (sources in
docs/testing.md): the simple format (``RecognitionStatus``, ``Offset``,
``Duration``, ``DisplayText``), the detailed format (an ``NBest`` list of
``Confidence``, ``Lexical``, ``ITN``, ``MaskedITN``, ``Display`` and, with word
timings, ``Words``), ``PrimaryLanguage`` for language identification, and
``PronunciationAssessment`` scores per phrase, word, syllable and phoneme.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._script import Phrase, TimedPhrase

__all__ = ["PROFANE_WORDS", "RecognitionRequest", "apply_profanity", "phrase_body"]

PROFANE_WORDS = frozenset({"damn", "hell", "crap", "shit", "fuck", "bastard", "bitch"})
"""Words the local service treats as profanity (the real service has its own lists)."""

DEFAULT_CONFIDENCE = 0.95
_ALTERNATIVE_STEP = 0.1
_MISPRONUNCIATION_BELOW = 60.0
_SCORE_NAMES = ("AccuracyScore", "FluencyScore", "CompletenessScore", "ProsodyScore", "PronScore")
_WORD = re.compile(r"[\w']+")
_PROFANITY_MODES = ("masked", "removed", "raw")


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


@dataclass(frozen=True)
class RecognitionRequest:
    """What the latest ``speech.context`` (and the connection's query) asked for."""

    single_phrase: bool
    translate_to: tuple[str, ...] = ()
    detailed: bool = False
    word_timings: bool = False
    word_confidence: bool = False
    profanity: str = "masked"
    languages: tuple[str, ...] = ()
    continuous_language: bool = False
    recognize: bool = True
    pronunciation: Mapping[str, Any] | None = None

    @classmethod
    def from_body(
        cls, body: Mapping[str, Any], kind: str, query: Mapping[str, str]
    ) -> RecognitionRequest:
        detection = _dict(body.get("phraseDetection"))
        mode = str(detection.get("mode", "")).lower()
        translation = _dict(body.get("translation"))
        targets = translation.get("targetLanguages", [])
        output = _dict(body.get("phraseOutput"))
        options = _dict(output.get("detailed")).get("options", [])
        options = [str(o).lower() for o in options] if isinstance(options, list) else []
        enrichment = _dict(detection.get("enrichment"))
        language_id = _dict(body.get("languageId"))
        candidates = language_id.get("languages")
        if not isinstance(candidates, list):
            listed = query.get("lidEnabled", "")
            candidates = [c for c in listed.split(",") if c]
        assessment = enrichment.get("pronunciationAssessment")
        profanity = str(enrichment.get("profanity") or query.get("profanity") or "masked").lower()
        return cls(
            single_phrase=mode == "interactive" or (not mode and kind == "interactive"),
            translate_to=tuple(str(t) for t in targets) if isinstance(targets, list) else (),
            detailed=str(output.get("format", "")).lower() == "detailed"
            or query.get("format", "").lower() == "detailed"
            or isinstance(assessment, dict),
            word_timings="wordtimings" in options or _truthy(query.get("wordLevelTimestamps")),
            word_confidence="wordconfidence" in options
            or _truthy(query.get("wordLevelConfidence")),
            profanity=profanity if profanity in _PROFANITY_MODES else "masked",
            languages=tuple(str(c) for c in candidates),
            continuous_language=str(language_id.get("mode", "")).lower() == "detectcontinuous",
            recognize=mode != "none",
            pronunciation=assessment if isinstance(assessment, dict) else None,
        )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def apply_profanity(text: str, mode: str) -> str:
    """Mask (``****``), remove or keep the words in :data:`PROFANE_WORDS`."""
    if mode == "raw":
        return text

    def replace(match: re.Match[str]) -> str:
        word = match.group()
        if word.lower() not in PROFANE_WORDS:
            return word
        return "*" * len(word) if mode == "masked" else ""

    masked = _WORD.sub(replace, text)
    if mode == "removed":
        masked = re.sub(r"\s{2,}", " ", masked).strip()
        masked = re.sub(r"\s+([,.!?;:])", r"\1", masked)
    return masked


def detected_language(phrase: Phrase, candidates: tuple[str, ...]) -> dict[str, str]:
    """``PrimaryLanguage`` for a phrase: its own language, or the first candidate."""
    if phrase.language is None:
        return {"Language": candidates[0], "Confidence": "High"}
    for candidate in candidates:
        if candidate.lower() == phrase.language.lower():
            return {"Language": candidate, "Confidence": "High"}
    return {"Language": "Unknown", "Confidence": "Unknown"}


def _word_timings(offset: int, duration: int, words: list[str]) -> list[tuple[int, int]]:
    """Spread ``words`` over the phrase in proportion to their length (ticks)."""
    if not words:
        return []
    total = sum(len(w) for w in words)
    timings: list[tuple[int, int]] = []
    cursor = offset
    for index, word in enumerate(words):
        end = (
            offset + duration if index == len(words) - 1 else cursor + duration * len(word) // total
        )
        timings.append((cursor, max(1, end - cursor)))
        cursor = end
    return timings


def _nbest_entry(
    text: str, lexical: str, itn: str, confidence: float, request: RecognitionRequest
) -> dict[str, Any]:
    return {
        "Confidence": round(confidence, 4),
        "Lexical": lexical,
        "ITN": itn,
        "MaskedITN": apply_profanity(itn, request.profanity),
        "Display": apply_profanity(text, request.profanity),
    }


def phrase_body(
    timed: TimedPhrase,
    status: str,
    request: RecognitionRequest,
    extra: Mapping[str, Any],
    language: Mapping[str, str] | None,
) -> dict[str, Any]:
    """The ``speech.phrase`` body answering ``timed`` in the format the client asked for."""
    phrase = timed.phrase
    body: dict[str, Any] = {}
    if request.detailed:
        body["Id"] = uuid.uuid4().hex
    body.update({"RecognitionStatus": status, "Offset": timed.offset, "Duration": timed.duration})
    if language is not None:
        body["PrimaryLanguage"] = dict(language)
    if status != "Success":
        return body
    if not request.recognize:  # language identification only
        body["Channel"] = 0
        return body
    display = apply_profanity(phrase.text, request.profanity)
    body["DisplayText"] = display
    body.update(extra)
    body["Channel"] = 0
    if not request.detailed:
        return body
    lexical = phrase.lexical_form
    itn = phrase.itn if phrase.itn is not None else lexical
    confidence = phrase.confidence if phrase.confidence is not None else DEFAULT_CONFIDENCE
    best = _nbest_entry(phrase.text, lexical, itn, confidence, request)
    words = lexical.split()
    timings = _word_timings(timed.offset, timed.duration, words)
    if request.word_timings or request.pronunciation is not None:
        best["Words"] = [
            {"Word": word, "Offset": start, "Duration": length}
            | ({"Confidence": round(confidence, 4)} if request.word_confidence else {})
            for word, (start, length) in zip(words, timings, strict=True)
        ]
    if request.pronunciation is not None:
        _assess(best, phrase, words, timings, request.pronunciation)
    body["NBest"] = [best]
    for rank, alternative in enumerate(phrase.alternatives, start=1):
        alt_lexical = " ".join(_WORD.findall(alternative.lower()))
        body["NBest"].append(
            _nbest_entry(
                alternative,
                alt_lexical,
                alt_lexical,
                max(0.0, confidence - rank * _ALTERNATIVE_STEP),
                request,
            )
        )
    return body


def _assess(
    best: dict[str, Any],
    phrase: Phrase,
    spoken: list[str],
    timings: list[tuple[int, int]],
    config: Mapping[str, Any],
) -> None:
    """Add pronunciation-assessment scores to an ``NBest`` entry, in place.

    Word accuracy comes from ``Phrase.pronunciation`` (default 100); with a
    reference text, completeness is the share of reference words spoken and,
    with ``enableMiscue``, unspoken reference words are listed as
    ``Omission`` and extra spoken ones as ``Insertion``. ``PronScore``
    defaults to a weighted mean of the other scores (the service's own
    weighting is not published).
    """
    given = dict(phrase.pronunciation or {})
    reference = [w.lower() for w in _WORD.findall(str(config.get("referenceText") or ""))]
    miscue = bool(config.get("enableMiscue")) and bool(reference)
    phonemes = str(config.get("granularity", "Phoneme")).lower() == "phoneme"
    words: list[dict[str, Any]] = []
    remaining = list(reference)
    scores: list[float] = []
    for word, (start, length) in zip(spoken, timings, strict=True):
        accuracy = float(given.get(word, 100.0))
        in_reference = word in remaining
        if in_reference:
            remaining.remove(word)
        if miscue and not in_reference:
            error = "Insertion"
        elif accuracy < _MISPRONUNCIATION_BELOW:
            error = "Mispronunciation"
        else:
            error = "None"
        if error != "Insertion":
            scores.append(accuracy)
        entry: dict[str, Any] = {
            "Word": word,
            "Offset": start,
            "Duration": length,
            "PronunciationAssessment": {"AccuracyScore": accuracy, "ErrorType": error},
        }
        if phonemes:
            entry["Syllables"] = [
                {
                    "Syllable": word,
                    "Grapheme": word,
                    "PronunciationAssessment": {"AccuracyScore": accuracy},
                    "Offset": start,
                    "Duration": length,
                }
            ]
            letters = [c for c in word if c.isalnum()] or [word]
            entry["Phonemes"] = [
                {
                    "Phoneme": letter,
                    "PronunciationAssessment": {"AccuracyScore": accuracy},
                    "Offset": start + i * length // len(letters),
                    "Duration": max(1, length // len(letters)),
                }
                for i, letter in enumerate(letters)
            ]
        words.append(entry)
    if miscue:
        for word in remaining:
            words.append({"Word": word, "PronunciationAssessment": {"ErrorType": "Omission"}})
    accuracy = sum(scores) / len(scores) if scores else 0.0
    spoken_reference = len(reference) - len(remaining)
    completeness = 100.0 * spoken_reference / len(reference) if reference else 100.0
    overall: dict[str, float] = {
        "AccuracyScore": accuracy,
        "FluencyScore": 100.0 if scores else 0.0,
        "CompletenessScore": completeness,
    }
    prosody = bool(config.get("enableProsodyAssessment"))
    if prosody:
        overall["ProsodyScore"] = 100.0 if scores else 0.0
    for name in _SCORE_NAMES:
        if name in given and (name != "ProsodyScore" or prosody):
            overall[name] = float(given[name])
    if "PronScore" not in given:
        parts = [overall["AccuracyScore"] * 0.6, overall["FluencyScore"] * 0.2]
        parts.append(overall["CompletenessScore"] * 0.2)
        if prosody:
            parts = [
                overall["AccuracyScore"] * 0.4,
                overall["FluencyScore"] * 0.2,
                overall["CompletenessScore"] * 0.2,
                overall["ProsodyScore"] * 0.2,
            ]
        overall["PronScore"] = sum(parts)
    best["PronunciationAssessment"] = {k: round(v, 1) for k, v in overall.items()}
    best["Words"] = words
