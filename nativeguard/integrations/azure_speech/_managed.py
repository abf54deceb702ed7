"""The Azure Speech ``managed_*`` factories: one SDK object per block, built on :class:`Managed`.

Each checks its arguments before anything is created (a wrong one is a
TypeError naming it, not an AttributeError from inside the SDK), constructs
the SDK object inside a :class:`nativeguard.Managed` block and masks the
config's subscription key and token in the block's errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

import azure.cognitiveservices.speech as speechsdk

from nativeguard import Managed, ReleaseMode, Scope


def _unwrap(obj: Any) -> Any:
    """The SDK object behind a managed proxy (or ``obj`` itself)."""
    return getattr(obj, "__wrapped__", obj)


__all__ = [
    "managed_connection",
    "managed_recognizer",
    "managed_synthesizer",
    "managed_transcriber",
    "managed_translation_recognizer",
]


def _checked_config(name: str, config: Any, expected: type) -> Any:
    raw = _unwrap(config)
    if not isinstance(raw, expected):
        raise TypeError(
            f"{name} must be a speechsdk.{expected.__qualname__}, got {type(config).__name__}"
        )
    return raw


def _checked_audio(audio_config: Any, *, output: bool) -> Any:
    """The SDK audio config to pass on; a WAV path becomes ``AudioConfig(filename=path)``."""
    raw = _unwrap(audio_config)
    if raw is None:
        return None
    expected: type = speechsdk.audio.AudioOutputConfig if output else speechsdk.audio.AudioConfig
    if isinstance(raw, expected):
        return raw
    if not output and isinstance(raw, (str, os.PathLike)):
        path = os.fspath(raw)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"audio_config: audio file not found: {path}")
        return speechsdk.audio.AudioConfig(filename=path)
    accepted = (
        "None or a speechsdk.audio.AudioOutputConfig"
        if output
        else "None, a WAV file path or a speechsdk.audio.AudioConfig"
    )
    raise TypeError(f"audio_config must be {accepted}, got {type(audio_config).__name__}")


def _sdk_block(
    sdk_class: Callable[..., Any],
    config_name: str,
    config: Any,
    audio_config: Any,
    *,
    scope: Scope | None,
    release: ReleaseMode | None,
    plain: bool,
    kwargs: dict[str, Any],
) -> Managed[Any]:
    """A managed block that constructs ``sdk_class(<config_name>=config, audio_config=...)``.

    The arguments are checked here, before anything is created, so a wrong
    one is a TypeError naming it instead of an AttributeError from the SDK.
    """
    expected = (
        speechsdk.translation.SpeechTranslationConfig
        if config_name == "translation_config"
        else speechsdk.SpeechConfig
    )
    raw_config = _checked_config(config_name, config, expected)
    raw_audio = _checked_audio(audio_config, output=sdk_class is speechsdk.SpeechSynthesizer)
    block = Managed(
        lambda: sdk_class(**{config_name: raw_config}, audio_config=raw_audio, **kwargs),
        scope=scope,
        release=release,
        plain=plain,
        description=getattr(sdk_class, "__name__", "object"),
    )
    block._secrets = _config_secrets(raw_config)
    return block


def _config_secrets(config: Any) -> tuple[str, ...]:
    """The config's subscription key and authorization token: masked in the block's errors."""
    found: list[str] = []
    for prop in (
        speechsdk.PropertyId.SpeechServiceConnection_Key,
        speechsdk.PropertyId.SpeechServiceAuthorization_Token,
    ):
        try:
            value = config.get_property(prop)
        except Exception:
            continue
        if isinstance(value, str) and len(value) >= 8:
            found.append(value)
    return tuple(found)


class _SpeechFactory(Protocol):
    """The shape of ``managed_recognizer``, ``managed_transcriber`` and ``managed_synthesizer``."""

    def __call__(
        self,
        speech_config: Any,
        audio_config: Any = None,
        *,
        scope: Scope | None = None,
        release: ReleaseMode | None = None,
        plain: bool = False,
        **kwargs: Any,
    ) -> Managed[Any]: ...


def _speech_factory(class_path: str, doc: str) -> _SpeechFactory:
    """A ``managed_*`` factory for the SDK class at ``class_path`` (taking a ``SpeechConfig``)."""
    name = (
        "managed_"
        + {
            "SpeechRecognizer": "recognizer",
            "transcription.ConversationTranscriber": "transcriber",
            "SpeechSynthesizer": "synthesizer",
        }[class_path]
    )

    def factory(
        speech_config: Any,
        audio_config: Any = None,
        *,
        scope: Scope | None = None,
        release: ReleaseMode | None = None,
        plain: bool = False,
        **kwargs: Any,
    ) -> Managed[Any]:
        sdk_class: Any = speechsdk
        for part in class_path.split("."):
            sdk_class = getattr(sdk_class, part)
        return _sdk_block(
            sdk_class,
            "speech_config",
            speech_config,
            audio_config,
            scope=scope,
            release=release,
            plain=plain,
            kwargs=kwargs,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return factory


managed_recognizer = _speech_factory(
    "SpeechRecognizer", """A ``speechsdk.SpeechRecognizer`` released at the end of the block."""
)
managed_transcriber = _speech_factory(
    "transcription.ConversationTranscriber",
    """A ``ConversationTranscriber`` released at the end of the block.""",
)
managed_synthesizer = _speech_factory(
    "SpeechSynthesizer",
    """A ``SpeechSynthesizer`` released at the end of the block.

    ``audio_config=None`` means what it means to the SDK: keep audio in memory,
    play nothing (the SDK's own default would open a speaker).
    """,
)


def managed_translation_recognizer(
    translation_config: Any,
    audio_config: Any = None,
    *,
    scope: Scope | None = None,
    release: ReleaseMode | None = None,
    plain: bool = False,
    **kwargs: Any,
) -> Managed[Any]:
    """A ``TranslationRecognizer`` released at the end of the block."""
    return _sdk_block(
        speechsdk.translation.TranslationRecognizer,
        "translation_config",
        translation_config,
        audio_config,
        scope=scope,
        release=release,
        plain=plain,
        kwargs=kwargs,
    )


def managed_connection(
    recognizer_or_synthesizer: Any,
    *,
    scope: Scope | None = None,
    release: ReleaseMode | None = None,
) -> Managed[Any]:
    """The ``speechsdk.Connection`` of a recognizer or synthesizer, closed at exit."""
    target = _unwrap(recognizer_or_synthesizer)

    def make() -> Any:
        if isinstance(target, speechsdk.SpeechSynthesizer):
            return speechsdk.Connection.from_speech_synthesizer(target)
        if isinstance(target, speechsdk.Recognizer):
            return speechsdk.Connection.from_recognizer(target)
        raise TypeError(
            f"managed_connection takes a recognizer or a synthesizer, got {type(target).__name__}"
        )

    return Managed(make, scope=scope, release=release, description="Connection")
