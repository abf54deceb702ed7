"""What the local speech service "hears": scripted phrases per turn."""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "DEFAULT_PHRASES",
    "TICKS_PER_SECOND",
    "Phrase",
    "RecognitionStatus",
    "Script",
    "TimedPhrase",
]

TICKS_PER_SECOND = 10_000_000
"""The service reports offsets and durations in 100 ns ticks."""

RecognitionStatus = Literal[
    "Success", "NoMatch", "InitialSilenceTimeout", "BabbleTimeout", "Error", "EndOfDictation"
]
_STATUSES: tuple[str, ...] = get_args(RecognitionStatus)

_LEXICAL_WORD = re.compile(r"[\w']+(?:-[\w']+)*")

# Layout of phrases that give no explicit timing.
_FIRST_OFFSET_S = 0.1
_GAP_S = 0.2
_SECONDS_PER_WORD = 0.3
_MIN_DURATION_S = 0.4


@dataclass(frozen=True, slots=True)
class Phrase:
    """One utterance the service recognises.

    ``offset_s``/``duration_s`` default to a layout after the previous phrase;
    ``hypotheses`` default to growing word prefixes of ``text``.
    ``translations`` maps target languages to text for translation
    recognizers; languages it does not name get ``"[lang] text"``.

    For the detailed output format and the features that use it:

    - ``lexical`` / ``itn``: the phrase's lexical and inverse-text-normalised
      forms (default: ``text`` lower-cased without punctuation, and the same);
      the lexical words are the ``Words`` of word-level timestamps, timed
      across the phrase's duration in proportion to their length.
    - ``confidence``: the first ``NBest`` entry's confidence (default 0.95);
      ``alternatives`` add ``NBest`` entries with lower confidences.
    - ``language``: the language the service detects for this phrase when the
      client asked for language identification (default: the first
      candidate); one that is not among the candidates is reported as
      ``"Unknown"``.
    - ``pronunciation``: pronunciation-assessment scores: a word (lexical,
      lower case) maps to that word's accuracy (default 100), and the keys
      ``AccuracyScore``, ``FluencyScore``, ``CompletenessScore``,
      ``ProsodyScore`` and ``PronScore`` override the overall scores the
      service otherwise derives.
    """

    text: str
    speaker: str | None = None
    offset_s: float | None = None
    duration_s: float | None = None
    hypotheses: tuple[str, ...] | None = None
    status: RecognitionStatus = "Success"
    translations: Mapping[str, str] | None = None
    lexical: str | None = None
    itn: str | None = None
    confidence: float | None = None
    alternatives: tuple[str, ...] = ()
    language: str | None = None
    pronunciation: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Phrase.text must be str, got {type(self.text).__name__}")
        if self.speaker is not None and not isinstance(self.speaker, str):
            raise TypeError(
                f"Phrase.speaker must be str or None, got {type(self.speaker).__name__}"
            )
        for name in ("offset_s", "duration_s"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise TypeError(
                    f"Phrase.{name} must be a number or None, got {type(value).__name__}"
                )
        if self.offset_s is not None and not self.offset_s >= 0:
            raise ValueError(f"Phrase.offset_s must be >= 0, got {self.offset_s!r}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"Phrase.duration_s must be > 0, got {self.duration_s!r}")
        if self.status not in _STATUSES:
            raise ValueError(f"Phrase.status must be one of {_STATUSES}, got {self.status!r}")
        if self.hypotheses is not None:
            if (
                isinstance(self.hypotheses, str)
                or not isinstance(self.hypotheses, Iterable)
                or not all(isinstance(h, str) for h in self.hypotheses)
            ):
                raise TypeError("Phrase.hypotheses must be a tuple of str")
            object.__setattr__(self, "hypotheses", tuple(self.hypotheses))
        if self.translations is not None:
            if not isinstance(self.translations, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.translations.items()
            ):
                raise TypeError("Phrase.translations must map language (str) to text (str)")
            object.__setattr__(self, "translations", dict(self.translations))
        for name in ("lexical", "itn", "language"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"Phrase.{name} must be str or None, got {type(value).__name__}")
        if self.confidence is not None and not (
            isinstance(self.confidence, (int, float))
            and not isinstance(self.confidence, bool)
            and 0 <= self.confidence <= 1
        ):
            raise ValueError(f"Phrase.confidence must be within [0, 1], got {self.confidence!r}")
        if (
            isinstance(self.alternatives, str)
            or not isinstance(self.alternatives, Iterable)
            or not all(isinstance(a, str) for a in self.alternatives)
        ):
            raise TypeError("Phrase.alternatives must be a tuple of str")
        object.__setattr__(self, "alternatives", tuple(self.alternatives))
        if self.pronunciation is not None:
            if not isinstance(self.pronunciation, Mapping) or not all(
                isinstance(k, str)
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and 0 <= v <= 100
                for k, v in self.pronunciation.items()
            ):
                raise TypeError(
                    "Phrase.pronunciation must map words or score names (str) to "
                    "scores within [0, 100]"
                )
            object.__setattr__(self, "pronunciation", dict(self.pronunciation))

    @property
    def lexical_form(self) -> str:
        """The lexical form: ``lexical``, or ``text`` lower-cased without punctuation."""
        if self.lexical is not None:
            return self.lexical
        return " ".join(_LEXICAL_WORD.findall(self.text.lower()))

    def translation(self, language: str, text: str | None = None) -> str:
        """The translation of ``text`` (default: the phrase) into ``language``."""
        if text in (None, self.text) and self.translations and language in self.translations:
            return self.translations[language]
        return f"[{language}] {self.text if text is None else text}"


@dataclass(frozen=True, slots=True)
class TimedPhrase:
    """A phrase with its timing resolved to ticks, as sent on the wire."""

    phrase: Phrase
    offset: int
    duration: int
    hypotheses: tuple[str, ...]

    @property
    def end(self) -> int:
        return self.offset + self.duration


DEFAULT_PHRASES: tuple[Phrase, ...] = (
    Phrase("Hello from the nativeguard speech service.", speaker="Guest-1"),
    Phrase("Every native handle is released.", speaker="Guest-2"),
)


def _default_hypotheses(text: str) -> tuple[str, ...]:
    words = text.split()
    return tuple(" ".join(words[:n]) for n in range(1, len(words)))


def _layout(phrases: Sequence[Phrase]) -> tuple[TimedPhrase, ...]:
    timed: list[TimedPhrase] = []
    cursor = _FIRST_OFFSET_S
    for phrase in phrases:
        offset = phrase.offset_s if phrase.offset_s is not None else cursor
        words = max(1, len(phrase.text.split()))
        duration = (
            phrase.duration_s
            if phrase.duration_s is not None
            else max(_MIN_DURATION_S, words * _SECONDS_PER_WORD)
        )
        hyps = phrase.hypotheses
        if hyps is None:
            hyps = _default_hypotheses(phrase.text)
        timed.append(
            TimedPhrase(
                phrase=phrase,
                offset=round(offset * TICKS_PER_SECOND),
                duration=round(duration * TICKS_PER_SECOND),
                hypotheses=hyps,
            )
        )
        cursor = offset + duration + _GAP_S
    return tuple(timed)


def _coerce_turn(turn: Iterable[Phrase | str]) -> tuple[Phrase, ...]:
    if isinstance(turn, (str, Phrase)):
        raise TypeError("a turn is a sequence of phrases; wrap a single phrase in a list")
    if not isinstance(turn, Iterable):
        raise TypeError(f"phrases must be an iterable of Phrase or str, got {type(turn).__name__}")
    out: list[Phrase] = []
    for item in turn:
        if isinstance(item, str):
            out.append(Phrase(item))
        elif isinstance(item, Phrase):
            out.append(item)
        else:
            raise TypeError(
                f"a script's phrases are Phrase or str items, got {type(item).__name__}"
            )
    return tuple(out)


class Script:
    """The phrases the service answers with, for each turn (one audio stream).

    ``Script([p1, p2])`` answers every turn with the same phrases.
    ``Script.cycle(turn_a, turn_b)`` answers successive turns (across all
    connections) with ``turn_a``, ``turn_b``, ``turn_a``, ...
    ``Script.per_connection(turn_a, turn_b)`` answers every turn of the first
    connection with ``turn_a``, of the second with ``turn_b``, and so on, cycling.
    """

    __slots__ = ("_counter", "_lock", "_mode", "_turns")

    def __init__(
        self,
        phrases: Iterable[Phrase | str] = DEFAULT_PHRASES,
        *,
        _turns: Sequence[Iterable[Phrase | str]] | None = None,
        _mode: Literal["turn", "connection"] = "turn",
    ) -> None:
        raw_turns = list(_turns) if _turns is not None else [phrases]
        if not raw_turns:
            raise ValueError("a script needs at least one turn")
        self._turns = tuple(_layout(_coerce_turn(turn)) for turn in raw_turns)
        self._mode = _mode
        self._counter = itertools.count()
        self._lock = threading.Lock()

    @classmethod
    def cycle(cls, *turns: Iterable[Phrase | str]) -> Script:
        return cls(_turns=turns, _mode="turn")

    @classmethod
    def per_connection(cls, *turns: Iterable[Phrase | str]) -> Script:
        return cls(_turns=turns, _mode="connection")

    @classmethod
    def coerce(cls, value: Script | Iterable[Phrase | str] | None) -> Script:
        """Accept a Script, a list of phrases/strings, or None (the default script)."""
        if value is None:
            return cls()
        if isinstance(value, Script):
            return value
        if isinstance(value, (str, Phrase)):
            return cls([value])
        return cls(value)

    @property
    def turns(self) -> tuple[tuple[TimedPhrase, ...], ...]:
        return self._turns

    def next_turn(self, connection_index: int) -> tuple[TimedPhrase, ...]:
        """The phrases of the next turn served on connection ``connection_index``."""
        if self._mode == "connection":
            return self._turns[connection_index % len(self._turns)]
        with self._lock:
            n = next(self._counter)
        return self._turns[n % len(self._turns)]

    def __repr__(self) -> str:
        texts = [[t.phrase.text for t in turn] for turn in self._turns]
        return f"Script(mode={self._mode!r}, turns={texts!r})"
