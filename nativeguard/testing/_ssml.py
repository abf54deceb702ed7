"""SSML as the local synthesis service reads it: validated, spoken text, bookmarks.

The real service rejects SSML it cannot use by closing the websocket with
code 1007 and a reason, which the SDK turns into a canceled result
(``CancellationErrorCode.BadRequest``, the reason in ``error_details``).
Documented and reported rejections this module mirrors: markup that is not
well-formed XML, a root other than ``<speak>``, a ``<speak>`` without
``version`` or ``xml:lang`` (the service answers "Ssml should only contain
one language."), elements the service does not know, and a ``<voice>`` without
a name. Voice names are not checked against a catalogue.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

__all__ = ["SsmlDocument", "SsmlError", "parse_ssml"]

_XML_NS = "{http://www.w3.org/XML/1998/namespace}"
_SSML_ELEMENTS = frozenset(
    {
        "speak",
        "voice",
        "prosody",
        "break",
        "p",
        "s",
        "sub",
        "say-as",
        "phoneme",
        "lexicon",
        "audio",
        "bookmark",
        "emphasis",
        "lang",
        "mark",
    }
)
_MSTTS_ELEMENTS = frozenset(
    {
        "express-as",
        "silence",
        "viseme",
        "backgroundaudio",
        "audioduration",
        "ttsembedding",
        "voiceconversion",
    }
)
_MSTTS_NAMESPACES = frozenset({"https://www.w3.org/2001/mstts", "http://www.w3.org/2001/mstts"})
_SSML_NAMESPACES = frozenset({"", "http://www.w3.org/2001/10/synthesis"})
# Websocket close reasons are limited to 123 bytes.
_MAX_REASON = 120


class SsmlError(ValueError):
    """SSML the service rejects; ``str()`` is the close reason it sends."""


@dataclass(frozen=True)
class SsmlDocument:
    """What is spoken, and where the bookmarks fall in it."""

    text: str
    bookmarks: tuple[tuple[int, str], ...]
    """(character position in ``text``, mark name) for each ``<bookmark mark=...>``."""
    language: str


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag


def _reject(reason: str) -> SsmlError:
    return SsmlError(reason[:_MAX_REASON])


def parse_ssml(ssml: str) -> SsmlDocument:
    """Validate ``ssml`` like the service does; ``SsmlError`` names what is wrong."""
    try:
        root = ET.fromstring(ssml)
    except ET.ParseError as error:
        raise _reject(f"SSML is not well-formed XML: {error}") from None
    namespace, local = _split(root.tag)
    if local != "speak" or namespace not in _SSML_NAMESPACES:
        raise _reject(f"The root element of SSML must be <speak>, got <{local}>.")
    language = root.get(_XML_NS + "lang")
    if not language:  # the real service's words for a <speak> without xml:lang
        raise _reject("Ssml should only contain one language.")
    if not root.get("version"):
        raise _reject("The <speak> element must have a version attribute.")
    pieces: list[str] = []
    bookmarks: list[tuple[int, str]] = []
    length = 0

    def add(text: str | None) -> None:
        nonlocal length
        if text:
            pieces.append(text)
            length += len(text)

    def walk(element: ET.Element) -> None:
        nonlocal length
        namespace, local = _split(element.tag)
        if namespace in _MSTTS_NAMESPACES:
            if local not in _MSTTS_ELEMENTS:
                raise _reject(f"[{local}] element is not allowed.")
        elif namespace not in _SSML_NAMESPACES or local not in _SSML_ELEMENTS:
            raise _reject(f"[{local}] element is not allowed.")
        if local == "voice" and not (element.get("name") or "").strip():
            raise _reject("The <voice> element must have a name attribute.")
        if local == "bookmark":
            mark = element.get("mark")
            if not mark:
                raise _reject("The <bookmark> element must have a mark attribute.")
            bookmarks.append((length, mark))
        if local == "sub":
            alias = element.get("alias")
            if alias is None:
                raise _reject("The <sub> element must have an alias attribute.")
            add(f" {alias} ")
        elif local in ("break", "silence", "viseme", "audioduration", "lexicon"):
            add(" ")
        else:
            add(element.text)
            for child in element:
                walk(child)
                add(child.tail)
            return
        for child in element:
            walk(child)
            add(child.tail)

    walk(root)
    return SsmlDocument("".join(pieces), tuple(bookmarks), language)
