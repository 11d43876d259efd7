"""HTTP/1.1 over a plain socket: the request line, headers and body go out byte for byte as given.

Clients such as aiohttp or requests normalise what they send (dot segments, percent-encoding,
header names, bodies); an attacker does not, so the suite sends its inputs with this.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

Header = tuple[str | bytes, str | bytes]


@dataclass
class Reply:
    """One answer; ``status`` 0 means the server closed the connection without one."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, the last value wins
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class ServerGone(ConnectionError):
    """Nothing listens on the port any more (the server process died)."""


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def build(method: str, target: str | bytes, headers: list[Header], body: bytes, host: str) -> bytes:
    lines = [_bytes(method) + b" " + _bytes(target) + b" HTTP/1.1", b"Host: " + host.encode()]
    names = {_bytes(k).lower() for k, _ in headers}
    if b"connection" not in names:
        lines.append(b"Connection: close")
    if b"content-length" not in names and b"transfer-encoding" not in names and (body or method == "POST"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines += [_bytes(k) + b": " + _bytes(v) for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def connect(port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionRefusedError:
        raise ServerGone(f"nothing listens on 127.0.0.1:{port}") from None


def request(
    port: int,
    method: str,
    target: str | bytes,
    *,
    headers: list[Header] | None = None,
    body: bytes = b"",
    timeout: float = 30.0,
) -> Reply:
    """Send one request on a fresh connection (``Connection: close``) and read the whole answer."""
    with connect(port, timeout) as sock:
        try:
            sock.sendall(build(method, target, headers or [], body, f"127.0.0.1:{port}"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413, 400) and close before it has read everything
        chunks: list[bytes] = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except ConnectionResetError:
            pass
    return parse(b"".join(chunks))


def parse(raw: bytes) -> Reply:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1."):
        return Reply(0)
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = dechunk(rest)
    return Reply(status, headers, rest)


def dechunk(data: bytes) -> bytes:
    """The body of a chunked message; a cut message gives what arrived."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        size_text = data[pos:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            break
        if size == 0:
            break
        out.append(data[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2
    return b"".join(out)
