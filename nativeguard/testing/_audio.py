"""Test audio: WAV files for recognition, synthetic speech for text to speech."""

from __future__ import annotations

import math
import os
import re
import struct
import wave
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AudioFormat",
    "parse_output_format",
    "parse_wav_header",
    "synthesize_words",
    "write_wav",
]

Encoding = Literal["pcm", "mulaw", "alaw"]

_OUTPUT_FORMAT = re.compile(
    r"^(?P<container>raw|riff)-(?P<rate>\d+)(?P<unit>khz|hz)-(?P<bits>8|16|24|32)bit-mono-"
    r"(?P<encoding>pcm|mulaw|alaw)$"
)
_MAX_AMPLITUDE = 0.3


@dataclass(frozen=True, slots=True)
class AudioFormat:
    sample_rate: int = 16000
    bits_per_sample: int = 16
    channels: int = 1
    encoding: Encoding = "pcm"
    riff: bool = False

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.bits_per_sample // 8 * self.channels


def write_wav(
    path: str | os.PathLike[str],
    seconds: float,
    *,
    sample_rate: int = 16000,
    frequency: float = 440.0,
    amplitude: float = _MAX_AMPLITUDE,
) -> str:
    """Write a mono 16-bit PCM WAV of a tone lasting ``seconds``; returns the path.

    The local service does not listen to the audio, so any sound will do; the
    length matters because phrases are emitted as the audio stream reaches them.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate!r}")
    if not 0 <= amplitude <= 1:
        raise ValueError(f"amplitude must be within [0, 1], got {amplitude!r}")
    frames = _tone(int(seconds * sample_rate), sample_rate, frequency, amplitude)
    target = os.fspath(path)
    with wave.open(target, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(_pcm16(frames))
    return target


def _tone(count: int, sample_rate: int, frequency: float, amplitude: float) -> list[float]:
    step = 2 * math.pi * frequency / sample_rate
    return [amplitude * math.sin(step * i) for i in range(count)]


def _pcm16(samples: list[float]) -> bytes:
    return struct.pack(f"<{len(samples)}h", *(int(s * 32767) for s in samples))


def _encode(samples: list[float], fmt: AudioFormat) -> bytes:
    if fmt.encoding == "mulaw":
        return bytes(_mulaw(int(s * 32767)) for s in samples)
    if fmt.encoding == "alaw":
        return bytes(_alaw(int(s * 32767)) for s in samples)
    if fmt.bits_per_sample == 8:
        return bytes(int(s * 127) + 128 for s in samples)
    if fmt.bits_per_sample == 16:
        return _pcm16(samples)
    width = fmt.bits_per_sample // 8
    scale = 2 ** (fmt.bits_per_sample - 1) - 1
    return b"".join(int(s * scale).to_bytes(width, "little", signed=True) for s in samples)


def _mulaw(sample: int) -> int:
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), clip) + bias
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _alaw(sample: int) -> int:
    sign = 0x00 if sample < 0 else 0x80
    magnitude = min(abs(sample), 32767) >> 3
    if magnitude < 32:
        value = magnitude >> 1
    else:
        exponent = magnitude.bit_length() - 5
        value = (exponent << 4) | ((magnitude >> exponent) & 0x0F)
    return (value | sign) ^ 0x55


def parse_output_format(name: str) -> AudioFormat | None:
    """Decode an SDK output format name such as ``riff-24khz-16bit-mono-pcm``.

    Returns None for compressed formats (mp3, opus, ...) the service cannot encode.
    """
    match = _OUTPUT_FORMAT.match(name.strip().lower())
    if match is None:
        return None
    rate = int(match["rate"]) * (1000 if match["unit"] == "khz" else 1)
    encoding: Encoding = match["encoding"]  # type: ignore[assignment]
    bits = int(match["bits"])
    if encoding != "pcm" and bits != 8:
        return None
    return AudioFormat(
        sample_rate=rate,
        bits_per_sample=bits,
        encoding=encoding,
        riff=match["container"] == "riff",
    )


def parse_wav_header(data: bytes) -> tuple[AudioFormat, int] | None:
    """Read a RIFF/WAVE header; returns the format and the header length, or None."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    fmt: AudioFormat | None = None
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt " and len(body) >= 16:
            _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            fmt = AudioFormat(sample_rate=rate, bits_per_sample=bits, channels=channels)
        elif chunk_id == b"data":
            return (fmt, pos + 8) if fmt is not None else None
        pos += 8 + size + (size & 1)
    return None


def _riff_header(fmt: AudioFormat, data_len: int) -> bytes:
    tag = {"pcm": 1, "alaw": 6, "mulaw": 7}[fmt.encoding]
    block = fmt.bits_per_sample // 8 * fmt.channels
    fmt_chunk = struct.pack(
        "<HHIIHH",
        tag,
        fmt.channels,
        fmt.sample_rate,
        fmt.bytes_per_second,
        block,
        fmt.bits_per_sample,
    )
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    body += b"data" + struct.pack("<I", data_len)
    return b"RIFF" + struct.pack("<I", len(body) + data_len) + body


@dataclass(frozen=True, slots=True)
class SpokenWord:
    text: str
    text_offset: int
    offset_s: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class SynthesizedSpeech:
    audio: bytes
    words: tuple[SpokenWord, ...]
    duration_s: float
    header_bytes: int = 0


_LEAD_S = 0.05
_WORD_BASE_S = 0.1
_PER_CHAR_S = 0.05
_PAUSE_S = 0.05
_WORD = re.compile(r"[\w'-]+")


def synthesize_words(text: str, fmt: AudioFormat) -> SynthesizedSpeech:
    """Render ``text`` as one tone per word, with silence between words.

    Length grows with the text (about 0.1 s + 50 ms per letter per word), so
    tests can check that longer text gives longer audio.
    """
    rate = fmt.sample_rate
    samples: list[float] = [0.0] * int(_LEAD_S * rate)
    words: list[SpokenWord] = []
    for index, match in enumerate(_WORD.finditer(text)):
        word = match.group()
        duration = _WORD_BASE_S + _PER_CHAR_S * len(word)
        start = len(samples) / rate
        pitch = 300.0 + 40.0 * (index % 8)
        samples.extend(_tone(int(duration * rate), rate, pitch, _MAX_AMPLITUDE))
        samples.extend([0.0] * int(_PAUSE_S * rate))
        words.append(SpokenWord(word, match.start(), start, duration))
    audio = _encode(samples, fmt)
    header = _riff_header(fmt, len(audio)) if fmt.riff else b""
    return SynthesizedSpeech(
        audio=header + audio,
        words=tuple(words),
        duration_s=len(samples) / rate,
        header_bytes=len(header),
    )
