"""Copy Speech SDK results and events into plain, picklable Python values.

An SDK result or event keeps its native handle (and the C++ objects behind it)
alive for as long as Python holds a reference to it. :func:`extract` copies what
an application needs into frozen dataclasses that reference nothing of the SDK:
no handles, no SDK classes, not even SDK enum members: their names are stored as
``str`` (a subclass that also compares equal to the SDK's member, so
``res.reason == speechsdk.ResultReason.SynthesizingAudioCompleted`` reads as it
did on the SDK's result). Field names follow the SDK's (``audio_data``,
``audio_duration``), so code moved from the SDK to the helpers keeps working.
The copies are immutable, hashable, and pickle round-trip equal, so
they can be kept, queued, or sent to another process while the native objects
are released at once.
"""

from __future__ import annotations

import datetime
import enum
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

import azure.cognitiveservices.speech as speechsdk

from nativeguard import FrozenMap
from nativeguard import redact as redact_text

__all__ = [
    "TICKS_PER_SECOND",
    "Bookmark",
    "Cancellation",
    "CancellationErrorCodeName",
    "CancellationReasonName",
    "DetachedEvent",
    "Extracted",
    "FrozenMap",
    "NoMatchReasonName",
    "ResultReasonName",
    "SdkEnumName",
    "Segment",
    "SessionEvent",
    "SpeechDetected",
    "SynthesisResult",
    "TranslationAudio",
    "Viseme",
    "WordBoundary",
    "detach_event",
    "extract",
    "plain",
]

TICKS_PER_SECOND = 10_000_000
"""The SDK reports offsets and durations in 100 ns ticks."""

_R = TypeVar("_R")

# Property-bag entries that carry error text; the SDK may echo the request URL
# (and with it a key passed as a query parameter) into them.
_ERROR_PROPERTIES = frozenset(
    {
        "SpeechServiceResponse_JsonErrorDetails",
        "CancellationDetails_ReasonText",
        "CancellationDetails_ReasonDetailedText",
    }
)
_LANGUAGE_PROPERTY = "SpeechServiceConnection_AutoDetectSourceLanguageResult"
# What ConversationTranscriptionResult.speaker_id holds when no speaker was attributed.
_NO_SPEAKER = frozenset({"", "Unknown"})


class SdkEnumName(str):
    """An SDK enum member's name: a plain ``str`` that also equals the member itself.

    ``ResultReasonName("Canceled") == speechsdk.ResultReason.Canceled`` is
    True (either way round), and it equals ``"Canceled"``; it never equals a
    member of another enum with the same name. It holds no SDK object, hashes
    as the ``str`` (and as the member), and pickles as itself.
    """

    __slots__ = ()
    enum_name: ClassVar[str] = ""
    """The SDK enum's class name this is a member name of."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, enum.Enum):
            return type(other).__name__ == self.enum_name and other.name == str(self)
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__

    def __repr__(self) -> str:
        return str.__repr__(self)

    def __reduce__(self) -> tuple[type[SdkEnumName], tuple[str]]:
        return (type(self), (str(self),))


class ResultReasonName(SdkEnumName):
    """A ``speechsdk.ResultReason`` member's name."""

    __slots__ = ()
    enum_name = "ResultReason"


class CancellationReasonName(SdkEnumName):
    """A ``speechsdk.CancellationReason`` member's name."""

    __slots__ = ()
    enum_name = "CancellationReason"


class CancellationErrorCodeName(SdkEnumName):
    """A ``speechsdk.CancellationErrorCode`` member's name."""

    __slots__ = ()
    enum_name = "CancellationErrorCode"


class NoMatchReasonName(SdkEnumName):
    """A ``speechsdk.NoMatchReason`` member's name."""

    __slots__ = ()
    enum_name = "NoMatchReason"


class BoundaryTypeName(SdkEnumName):
    """A ``speechsdk.SpeechSynthesisBoundaryType`` member's name."""

    __slots__ = ()
    enum_name = "SpeechSynthesisBoundaryType"


_ENUM_NAMES: dict[str, type[SdkEnumName]] = {
    cls.enum_name: cls
    for cls in (
        ResultReasonName,
        CancellationReasonName,
        CancellationErrorCodeName,
        NoMatchReasonName,
        BoundaryTypeName,
    )
}


_EMPTY = FrozenMap()


@dataclass(frozen=True, slots=True)
class Segment:
    """A recognition, transcription or translation result.

    Keeps the SDK result's attribute names (``text``, ``speaker_id``,
    ``offset``/``duration`` in ticks, ``reason``, ``result_id``, ``json``,
    ``properties``) so a detached result reads like the original. ``reason``
    and ``no_match_reason`` are SDK enum member names, e.g. ``"RecognizedSpeech"``
    and ``"InitialSilenceTimeout"``. ``speaker_id`` is ``None`` when no speaker
    was attributed: the SDK's ``""`` (no speaker info, or not a transcriber)
    and ``"Unknown"`` (diarization could not tell) both become ``None``; the raw
    service answer stays in ``json``. ``language`` is the auto-detected source
    language, ``None`` without language detection. ``properties`` holds the
    result's property bag by ``PropertyId`` name (error texts redacted);
    ``translations`` maps target language to text (empty unless translating).
    ``offset_s``/``duration_s`` are derived from the ticks.
    """

    text: str
    speaker_id: str | None
    offset: int
    duration: int
    reason: str
    result_id: str
    language: str | None = None
    json: str = ""
    properties: FrozenMap = _EMPTY
    translations: FrozenMap = _EMPTY
    no_match_reason: str | None = None
    offset_s: float = field(init=False)
    duration_s: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "offset_s", self.offset / TICKS_PER_SECOND)
        object.__setattr__(self, "duration_s", self.duration / TICKS_PER_SECOND)

    @property
    def end_s(self) -> float:
        """Where the segment ends in the audio, in seconds."""
        return (self.offset + self.duration) / TICKS_PER_SECOND


@dataclass(frozen=True, slots=True)
class Cancellation:
    """Why a recognition or synthesis was canceled.

    ``reason`` is a ``CancellationReason`` name (``"Error"``, ``"EndOfStream"``,
    ``"CancelledByUser"``), ``error_code`` a ``CancellationErrorCode`` name
    (``"NoError"``, ``"ConnectionFailure"``, ``"AuthenticationFailure"``, ...).
    ``details`` is the SDK's error text with secrets redacted. ``code`` and
    ``error_details`` alias the last two under the names ``CancellationDetails``
    uses, so a detached ``cancellation_details`` reads like the SDK's.
    """

    reason: str
    error_code: str
    details: str

    @property
    def code(self) -> str:
        """``error_code``, named as on the SDK's ``CancellationDetails``."""
        return self.error_code

    @property
    def error_details(self) -> str:
        """``details``, named as on the SDK's cancellation details."""
        return self.details


@dataclass(frozen=True, slots=True)
class SynthesisResult:
    """A synthesis result, or the result carried by a synthesis event.

    Read it with the SDK's names: ``audio_data`` is all the audio for a
    completed result, one chunk for a ``synthesizing`` event (the SDK gives
    each chunk its own WAV header when the output format is RIFF), empty for
    started and canceled; ``audio_duration`` is a ``timedelta`` (millisecond
    resolution); ``reason`` equals the ``ResultReason`` member;
    ``cancellation_details`` (also ``cancellation``) is set when ``reason`` is
    ``"Canceled"``. ``audio`` and ``duration_s`` (seconds) are the same
    values under nativeguard's earlier names.
    """

    audio: bytes
    duration_s: float
    reason: str
    result_id: str
    cancellation: Cancellation | None = None

    @property
    def audio_data(self) -> bytes:
        """The audio, named as on the SDK's ``SpeechSynthesisResult``."""
        return self.audio

    @property
    def audio_duration(self) -> datetime.timedelta:
        """The audio's length as a ``timedelta``, as the SDK's ``audio_duration``."""
        return datetime.timedelta(seconds=self.duration_s)

    @property
    def cancellation_details(self) -> Cancellation | None:
        """``cancellation``, named as on the SDK's result."""
        return self.cancellation


@dataclass(frozen=True, slots=True)
class WordBoundary:
    """A synthesis word boundary: where a word of the input text is spoken.

    ``text_offset``/``word_length`` index the input text in characters
    (``text_offset`` is -1 when the SDK cannot map it); ``boundary_type`` is a
    ``SpeechSynthesisBoundaryType`` name (``"Word"``, ``"Punctuation"``, ...).
    """

    text: str
    text_offset: int
    word_length: int
    audio_offset_s: float
    duration_s: float
    boundary_type: str
    result_id: str = ""


@dataclass(frozen=True, slots=True)
class Bookmark:
    """A synthesis bookmark (``<bookmark mark="..."/>`` in SSML) was reached."""

    text: str
    audio_offset_s: float
    result_id: str = ""


@dataclass(frozen=True, slots=True)
class Viseme:
    """A synthesis viseme (mouth position) event."""

    viseme_id: int
    audio_offset_s: float
    animation: str = ""
    result_id: str = ""


@dataclass(frozen=True, slots=True)
class TranslationAudio:
    """Synthesized audio of a translation (``TranslationRecognizer.synthesizing``)."""

    audio: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A session or connection event (started, stopped, connected, disconnected)."""

    session_id: str


@dataclass(frozen=True, slots=True)
class SpeechDetected:
    """Speech start or end was detected at ``offset`` ticks into the audio."""

    offset: int
    session_id: str
    offset_s: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "offset_s", self.offset / TICKS_PER_SECOND)


Extracted = Union[
    Segment,
    Cancellation,
    SynthesisResult,
    WordBoundary,
    Bookmark,
    Viseme,
    TranslationAudio,
    SessionEvent,
    SpeechDetected,
]
"""Everything :func:`extract` returns."""

_E = TypeVar("_E", bound=Extracted)

_transcription: Any = speechsdk.transcription
_translation: Any = speechsdk.translation

# Events whose payload is a result; checked after the canceled events (their subclasses).
_CANCELED_EVENTS: tuple[type, ...] = (
    speechsdk.SpeechRecognitionCanceledEventArgs,
    _transcription.ConversationTranscriptionCanceledEventArgs,
    _transcription.MeetingTranscriptionCanceledEventArgs,
    _translation.TranslationRecognitionCanceledEventArgs,
)
_RESULT_EVENTS: tuple[type, ...] = (
    speechsdk.SpeechRecognitionEventArgs,
    speechsdk.KeywordRecognitionEventArgs,
    _transcription.ConversationTranscriptionEventArgs,
    _transcription.MeetingTranscriptionEventArgs,
    _translation.TranslationRecognitionEventArgs,
    _translation.TranslationSynthesisEventArgs,
    speechsdk.SpeechSynthesisEventArgs,
)

_ACCEPTED = (
    "a Speech SDK result (recognition, transcription, translation, synthesis), "
    "cancellation details, or event (session, connection, speech start/end, "
    "recognizing/recognized, canceled, synthesis, word boundary, bookmark, viseme)"
)


def _name(member: Any) -> str:
    """The name of an SDK enum member, as a ``str`` that also equals the member."""
    name = getattr(member, "name", None)
    if not isinstance(name, str):
        return str(member)
    kind = _ENUM_NAMES.get(type(member).__name__) if isinstance(member, enum.Enum) else None
    return str(name) if kind is None else kind(name)


def _secrets(secrets: str | Iterable[str]) -> tuple[str, ...]:
    """One secret given as a bare ``str`` is one secret, not a run of characters."""
    if isinstance(secrets, str):
        return (secrets,)
    values = tuple(secrets) if isinstance(secrets, Iterable) else None
    if values is None or not all(isinstance(value, str) for value in values):
        raise TypeError(
            f"argument 'secrets' takes a str or an iterable of str, got {type(secrets).__name__}"
        )
    return values


def _cancellation(details: Any, secrets: tuple[str, ...]) -> Cancellation:
    # CancellationDetails has .code, SpeechSynthesisCancellationDetails .error_code.
    code = details.error_code if hasattr(details, "error_code") else details.code
    return Cancellation(
        reason=_name(details.reason),
        error_code=_name(code),
        details=redact_text(str(details.error_details or ""), secrets),
    )


def _speaker(result: Any) -> str | None:
    speaker = getattr(result, "speaker_id", None)
    if speaker is None:  # MeetingTranscriptionResult names it user_id
        speaker = getattr(result, "user_id", None)
    if speaker is None or speaker in _NO_SPEAKER:
        return None
    return str(speaker)


def _recognition(result: Any, secrets: tuple[str, ...]) -> Segment | Cancellation:
    if result.reason == speechsdk.ResultReason.Canceled:
        return _cancellation(result.cancellation_details, secrets)
    # RecognitionResult copied its property bag into a dict when it was built,
    # so this reads no native memory.
    properties: dict[str, str] = {}
    for key, value in result.properties.items():
        name = _name(key)
        properties[name] = redact_text(value, secrets) if name in _ERROR_PROPERTIES else value
    no_match = getattr(result, "no_match_details", None)
    translations = getattr(result, "translations", None)
    return Segment(
        text=str(result.text),
        speaker_id=_speaker(result),
        offset=int(result.offset),
        duration=int(result.duration),
        reason=_name(result.reason),
        result_id=str(result.result_id),
        language=properties.get(_LANGUAGE_PROPERTY) or None,
        json=str(result.json or ""),
        properties=FrozenMap(properties),
        translations=FrozenMap(translations) if translations else _EMPTY,
        no_match_reason=_name(no_match.reason) if no_match is not None else None,
    )


def _synthesis(result: Any, secrets: tuple[str, ...]) -> SynthesisResult:
    details = result.cancellation_details
    return SynthesisResult(
        audio=bytes(result.audio_data),
        duration_s=result.audio_duration.total_seconds(),
        reason=_name(result.reason),
        result_id=str(result.result_id),
        cancellation=_cancellation(details, secrets) if details is not None else None,
    )


def extract(obj: object, *, secrets: str | Iterable[str] = ()) -> Extracted:
    """Copy an SDK result or event into a frozen dataclass that references no SDK object.

    - recognition / transcription / translation results and their events ->
      :class:`Segment`, or :class:`Cancellation` when the result was canceled;
    - canceled events and cancellation details -> :class:`Cancellation`;
    - synthesis results and synthesis events -> :class:`SynthesisResult`
      (a canceled synthesis keeps its :class:`Cancellation` in ``cancellation``);
    - word boundary / bookmark / viseme events -> :class:`WordBoundary`,
      :class:`Bookmark`, :class:`Viseme`;
    - speech start/end detected -> :class:`SpeechDetected`; session and
      connection events -> :class:`SessionEvent`;
    - translation synthesis results/events -> :class:`TranslationAudio`.

    Error texts are passed through :func:`nativeguard.redact`,
    which also masks ``secrets`` (a value or several, e.g. the subscription key).
    An already extracted value is returned unchanged. Anything else raises
    ``TypeError``.
    """
    if isinstance(
        obj,
        (
            Segment,
            Cancellation,
            SynthesisResult,
            WordBoundary,
            Bookmark,
            Viseme,
            TranslationAudio,
            SessionEvent,
            SpeechDetected,
        ),
    ):
        return obj
    hidden = _secrets(secrets)
    sdk: Any = obj
    if isinstance(obj, speechsdk.RecognitionResult):
        return _recognition(sdk, hidden)
    if isinstance(obj, speechsdk.SpeechSynthesisResult):
        return _synthesis(sdk, hidden)
    if isinstance(obj, _translation.TranslationSynthesisResult):
        return TranslationAudio(audio=bytes(sdk.audio), reason=_name(sdk.reason))
    if isinstance(obj, _CANCELED_EVENTS):
        return _cancellation(sdk.cancellation_details, hidden)
    if isinstance(obj, _RESULT_EVENTS):
        return extract(sdk.result, secrets=hidden)
    if isinstance(
        obj, (speechsdk.CancellationDetails, speechsdk.SpeechSynthesisCancellationDetails)
    ):
        return _cancellation(sdk, hidden)
    if isinstance(obj, speechsdk.SpeechSynthesisWordBoundaryEventArgs):
        return WordBoundary(
            text=str(sdk.text),
            text_offset=int(sdk.text_offset),
            word_length=int(sdk.word_length),
            audio_offset_s=sdk.audio_offset / TICKS_PER_SECOND,
            duration_s=sdk.duration.total_seconds(),
            boundary_type=_name(sdk.boundary_type),
            result_id=str(sdk.result_id),
        )
    if isinstance(obj, speechsdk.SpeechSynthesisBookmarkEventArgs):
        return Bookmark(
            text=str(sdk.text),
            audio_offset_s=sdk.audio_offset / TICKS_PER_SECOND,
            result_id=str(sdk.result_id),
        )
    if isinstance(obj, speechsdk.SpeechSynthesisVisemeEventArgs):
        return Viseme(
            viseme_id=int(sdk.viseme_id),
            audio_offset_s=sdk.audio_offset / TICKS_PER_SECOND,
            animation=str(sdk.animation or ""),
            result_id=str(sdk.result_id),
        )
    if isinstance(obj, speechsdk.RecognitionEventArgs):
        return SpeechDetected(offset=int(sdk.offset), session_id=str(sdk.session_id))
    if isinstance(obj, speechsdk.SessionEventArgs):
        return SessionEvent(session_id=str(sdk.session_id))
    kind = type(obj)
    raise TypeError(f"extract() takes {_ACCEPTED}; got {kind.__module__}.{kind.__qualname__}")


def plain(
    callback: Callable[[_E], _R], *, secrets: str | Iterable[str] = ()
) -> Callable[[Any], _R]:
    """Wrap an SDK event callback so it receives ``extract(evt)`` instead of ``evt``.

    The callback then never holds an SDK object, so nothing it keeps can pin
    native memory. Name and docstring are kept (``functools.wraps``); exceptions
    from ``extract`` or the callback propagate. ``secrets`` as for :func:`extract`.
    """
    if not callable(callback):
        raise TypeError(
            f"plain() argument 'callback' must be callable (a function taking the event), "
            f"got {type(callback).__name__} {callback!r:.80}"
        )
    hidden = _secrets(secrets)

    @functools.wraps(callback)
    def receive_plain(evt: Any) -> _R:
        return callback(extract(evt, secrets=hidden))  # type: ignore[arg-type]

    return receive_plain


@dataclass(frozen=True, slots=True)
class DetachedEvent:
    """What a kept event becomes: the SDK event's common fields, as plain data."""

    session_id: str | None
    offset: int | None
    result: object
    cancellation_details: Cancellation | None

    @classmethod
    def of(cls, evt: Any) -> DetachedEvent:
        result = getattr(evt, "result", None)
        plain_result: object = None
        cancellation: Cancellation | None = None
        if result is not None:
            extracted = extract(result)
            plain_result = extracted
            if isinstance(extracted, Cancellation):
                cancellation = extracted
        if getattr(evt, "cancellation_details", None) is not None:
            extracted_evt = extract(evt)
            if isinstance(extracted_evt, Cancellation):
                cancellation = extracted_evt
        offset = getattr(evt, "offset", None)
        return cls(
            session_id=getattr(evt, "session_id", None),
            offset=offset if isinstance(offset, int) else None,
            result=plain_result,
            cancellation_details=cancellation,
        )


def detach_event(evt: object) -> DetachedEvent:
    """What a Speech SDK event kept past its managed block becomes."""
    return DetachedEvent.of(evt)
