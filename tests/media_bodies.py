"""Request bodies of the media tests: real WAV audio and multipart uploads as a client writes them."""

from __future__ import annotations

import io
import wave


def wav(frames: int, rate: int = 16_000) -> bytes:
    """A real mono 16-bit WAV of ``frames`` frames (a faint constant tone) at ``rate`` Hz."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x03\x00" * frames)
    return out.getvalue()


def multipart(
    fields: dict[str, str], files: dict[str, tuple[str, bytes] | tuple[str, bytes, str]], boundary: str
) -> bytes:
    """A multipart/form-data body exactly as a client writes it (its boundary, its layout);
    a file is ``(filename, data)`` or ``(filename, data, content type)``."""
    out = b""
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, file in files.items():
        filename, data = file[0], file[1]
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        if len(file) == 3:
            head += f"Content-Type: {file[2]}\r\n"
        out += (head + "\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()
