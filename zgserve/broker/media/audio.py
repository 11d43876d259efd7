"""Audio: transcriptions per second of the upload, speech per second of the answer.

Durations are measured here with libsndfile (``soundfile``) from the audio itself, as
``frames / samplerate``, never taken from a client or a backend.

* Transcriptions bill whole seconds of the upload as the official broker and the SDK's
  ``SpeechToText`` extractor count them: ``max(round(frames / samplerate), 1)`` seconds
  (halves rounded up, as JavaScript's ``Math.round``; computed in integers) × ``inputPrice``.
  The fee is known before the upload is forwarded and reserved exactly.
* Speech reserves ``min(maxAudioSeconds, ceil((2 + chars / 4) / speed))`` seconds (4
  characters a second is slower than any voice at speed 1) and is charged what the returned
  audio lasts, ``frames × outputPrice // samplerate`` (rounded down once), never above that
  reservation.
"""

from __future__ import annotations

import asyncio
import io
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import soundfile  # type: ignore[import-untyped]

from zgserve.broker.catalog import CatalogModel
from zgserve.broker.media import Bill
from zgserve.common import media
from zgserve.common.errors import BadRequest, UpstreamError

MAX_SECONDS = 4 * 3600  # longer than any upload this route takes; bounds a forged header
CHARS_PER_SECOND = 4
LEAD_SECONDS = 2


class InvalidAudio(BadRequest):
    code = "invalid_audio"


@dataclass(frozen=True, slots=True)
class Duration:
    frames: int
    samplerate: int

    @property
    def whole_seconds(self) -> int:
        """Seconds rounded up: what the record's units say (``fee <= units × price``)."""
        return -(-self.frames // self.samplerate)

    @property
    def billable_seconds(self) -> int:
        """Seconds rounded to the nearest (halves up), at least 1: the official transcription unit."""
        return max((2 * self.frames + self.samplerate) // (2 * self.samplerate), 1)

    def fee(self, price_per_second: int) -> int:
        """The exact price of this much audio, rounded down once (speech)."""
        return self.frames * price_per_second // self.samplerate


# Bytes a WAV may carry after its audio (LIST, id3, cue chunks: a few KiB in practice). More is
# refused: a backend that read past the declared data would transcribe audio nobody paid for.
WAV_TRAILER_BYTES = 1 << 16
_BLOCK_FRAMES = 1 << 16


def _measure(data: bytes) -> Duration | None:
    if _wav_hides_audio(data):
        return None
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as audio:
            rate, declared = int(audio.samplerate), int(audio.frames)
            if rate <= 0 or declared > MAX_SECONDS * rate:
                return None
            # Decoded, not only the header's count: a compressed file's header (an MP3's Xing
            # frame count, a FLAC's total) can say less than the audio it holds.
            decoded = 0
            for block in audio.blocks(blocksize=_BLOCK_FRAMES, dtype="int16", always_2d=True):
                decoded += len(block)
                if decoded > MAX_SECONDS * rate:
                    return None
    except (RuntimeError, TypeError, ValueError, EOFError):  # LibsndfileError is a RuntimeError
        return None
    frames = max(declared, decoded)
    return Duration(frames, rate) if frames > 0 else None


def _wav_hides_audio(data: bytes) -> bool:
    """True for a RIFF/WAVE file with more than one ``data`` chunk, or with more than
    :data:`WAV_TRAILER_BYTES` after its ``data`` chunk."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return False
    position, end_of_data, chunks = 12, None, 0
    while position + 8 <= len(data):
        size = int.from_bytes(data[position + 4 : position + 8], "little")
        if data[position : position + 4] == b"data":
            chunks += 1
            if size in (0, 0xFFFFFFFF):  # a streamed WAV: its audio runs to the end of the file
                return chunks > 1
            end_of_data = position + 8 + size
        position += 8 + size + (size & 1)
    if end_of_data is None:
        return False  # no data chunk: libsndfile refuses it
    return chunks > 1 or len(data) - end_of_data > WAV_TRAILER_BYTES


async def measure(data: bytes) -> Duration | None:
    """The duration of ``data``, or None when it is not audio libsndfile can read."""
    return await asyncio.to_thread(_measure, data) if len(data) > 1 << 16 else _measure(data)


# ---- transcriptions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedTranscription:
    request: media.TranscriptionRequest
    duration: Duration

    @property
    def model_name(self) -> Any:
        return self.request.fields.get("model")


async def parse_transcription(body: bytes, content_type: bytes | None) -> ParsedTranscription:
    request = media.transcription_request(body, content_type)
    duration = await measure(request.audio.data)
    if duration is None:
        raise InvalidAudio("'file' is not audio this provider can read (WAV, FLAC, OGG, MP3)", param="file")
    return ParsedTranscription(request, duration)


@dataclass(frozen=True, slots=True)
class TranscriptionPlan:
    duration: Duration
    price: int  # neuron per second of input audio (the model's input price)

    @property
    def reserve(self) -> int:
        return self.duration.billable_seconds * self.price

    async def bill(self, data: bytes, content_type: str) -> Bill:
        seconds = self.duration.billable_seconds
        return Bill(seconds * self.price, input_units=seconds, input_price=self.price)


def plan_transcription(parsed: ParsedTranscription, model: CatalogModel) -> TranscriptionPlan:
    return TranscriptionPlan(parsed.duration, model.pricing.input_price)


# ---- speech --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedSpeech:
    request: media.SpeechRequest

    @property
    def model_name(self) -> Any:
        return self.request.payload.get("model")


def parse_speech(body: bytes) -> ParsedSpeech:
    return ParsedSpeech(media.speech_request(body))


def reserve_seconds(chars: int, speed: float, ceiling: int) -> int:
    """The seconds reserved for speaking ``chars`` characters at ``speed``, at most ``ceiling``."""
    return min(ceiling, math.ceil((LEAD_SECONDS + Fraction(chars, CHARS_PER_SECOND)) / Fraction(speed)))


@dataclass(frozen=True, slots=True)
class SpeechPlan:
    seconds: int
    price: int  # neuron per second of output audio (the model's output price)

    @property
    def reserve(self) -> int:
        return self.seconds * self.price

    async def bill(self, data: bytes, content_type: str) -> Bill:
        duration = await measure(data)
        if duration is None:
            # Not audio we can measure: the backend's failure; the client gets a 502, not a bill.
            raise UpstreamError("the speech backend answered with audio that cannot be read")
        seconds = duration.whole_seconds
        return Bill(duration.fee(self.price), output_units=seconds, output_price=self.price)


def plan_speech(parsed: ParsedSpeech, model: CatalogModel) -> SpeechPlan:
    request = parsed.request
    seconds = reserve_seconds(request.chars, request.speed, model.max_audio_seconds)
    return SpeechPlan(seconds, model.pricing.output_price)
