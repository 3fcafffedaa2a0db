"""SASL authentication in front of the embedded broker, for tests of the clients' logins.

The embedded broker (Tansu 0.6.0) cannot authenticate anyone here: its memory storage
ignores ``tansu user create`` (the credentials are not kept, so every SCRAM login ends in
``unknown-user``), and without ``--authentication`` it answers every SaslHandshake with
UNSUPPORTED_SASL_MECHANISM. `SaslGate` ends SASL itself instead, as a broker would: it is
the `authenticate` step of a `service.testing.tls.TlsTerminator`, which relays a connection
to the broker only once its login succeeded.

On a new connection it relays ApiVersions requests to the broker (clients ask before
authenticating), answers SaslHandshake (v0, v1) with its mechanisms, and runs SaslAuthenticate
(v0 to v2) for PLAIN (RFC 4616) and SCRAM-SHA-256/512 (RFC 5802, 7677) against its users. A
wrong password gets SASL_AUTHENTICATION_FAILED, as from Kafka, and the connection is closed.
`logins` counts successful logins by user, so a test can tell that the gate was passed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["SaslGate"]

_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 18, 17, 36
_UNSUPPORTED_SASL_MECHANISM, _ILLEGAL_SASL_STATE, _SASL_AUTHENTICATION_FAILED = 33, 34, 58
_ITERATIONS = 4096
_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


@dataclass(frozen=True)
class _Request:
    api_key: int
    version: int
    correlation_id: int
    body: bytes  # after the header


class _LoginFailed(Exception):
    """The credentials are wrong (the message is what the client is told)."""


class SaslGate:
    """Authenticates each connection against `users` (name -> password) with one of
    `mechanisms` before it reaches the broker."""

    def __init__(
        self,
        users: Mapping[str, str],
        mechanisms: Sequence[str] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    ) -> None:
        self.users = dict(users)
        self.mechanisms = list(mechanisms)
        self.logins: Counter[str] = Counter()
        self.refusals = 0

    async def __call__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        broker_reader: asyncio.StreamReader,
        broker_writer: asyncio.StreamWriter,
    ) -> bool:
        """Run the login on a new connection; True once it succeeded (then relay it)."""
        mechanism: str | None = None
        scram: _ScramServer | None = None
        while True:
            frame = await _read_frame(reader)
            request = _parse(frame)
            if request.api_key == _API_VERSIONS:
                broker_writer.write(struct.pack(">i", len(frame)) + frame)
                await broker_writer.drain()
                answer = await _read_frame(broker_reader)
                writer.write(struct.pack(">i", len(answer)) + answer)
                await writer.drain()
            elif request.api_key == _SASL_HANDSHAKE:
                asked = _string(request.body, 0)[0]
                known = asked in self.mechanisms
                mechanism = asked if known else None
                error = 0 if known else _UNSUPPORTED_SASL_MECHANISM
                await _send(writer, request, _handshake_response(error, self.mechanisms))
                if not known:
                    return False
            elif request.api_key == _SASL_AUTHENTICATE and mechanism is not None:
                token = _auth_bytes(request)
                try:
                    if mechanism == "PLAIN":
                        self._check_plain(token)
                        await _send(writer, request, _authenticate_response(request, 0, b""))
                        return True
                    if scram is None:
                        scram = _ScramServer(mechanism, self.users)
                        reply = scram.first(token)
                        await _send(writer, request, _authenticate_response(request, 0, reply))
                        continue
                    reply = scram.final(token)
                    self.logins[scram.user] += 1
                    await _send(writer, request, _authenticate_response(request, 0, reply))
                    return True
                except _LoginFailed as exc:
                    self.refusals += 1
                    answer = _authenticate_response(
                        request, _SASL_AUTHENTICATION_FAILED, b"", str(exc)
                    )
                    await _send(writer, request, answer)
                    return False
            else:  # anything else before a login: refused, as by Kafka
                return False

    def _check_plain(self, token: bytes) -> None:
        parts = token.split(b"\0")
        if len(parts) != 3:
            raise _LoginFailed("Authentication failed: malformed PLAIN token")
        user, password = parts[1].decode(), parts[2].decode()
        if self.users.get(user) != password:
            raise _LoginFailed("Authentication failed: Invalid username or password")
        self.logins[user] += 1


class _ScramServer:
    """The server side of one SCRAM exchange (two round trips)."""

    def __init__(self, mechanism: str, users: Mapping[str, str]) -> None:
        self._hash = _HASHES[mechanism]
        self._users = users
        self.user = ""
        self._salted = b""
        self._first_bare = self._server_first = ""

    def first(self, token: bytes) -> bytes:
        """client-first (``n,,n=user,r=nonce``) -> server-first (``r=..,s=..,i=..``)."""
        text = token.decode()
        self._first_bare = text.split(",", 2)[2]
        fields = dict(item.split("=", 1) for item in self._first_bare.split(","))
        self.user = fields["n"].replace("=2C", ",").replace("=3D", "=")
        salt = os.urandom(16)
        password = self._users.get(self.user)
        # an unknown user still gets a challenge: the failure comes with the proof
        self._salted = hashlib.pbkdf2_hmac(
            self._hash, (password or os.urandom(16).hex()).encode(), salt, _ITERATIONS
        )
        nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
        self._server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={_ITERATIONS}"
        return self._server_first.encode()

    def final(self, token: bytes) -> bytes:
        """client-final (``c=..,r=..,p=proof``) -> server-final (``v=signature``), or
        `_LoginFailed` when the proof is wrong."""
        text = token.decode()
        without_proof, _, proof = text.rpartition(",p=")
        message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        client_key = self._hmac(self._salted, b"Client Key")
        stored_key = hashlib.new(self._hash, client_key).digest()
        signature = self._hmac(stored_key, message)
        claimed = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=False))
        if self.user not in self._users or not hmac.compare_digest(
            hashlib.new(self._hash, claimed).digest(), stored_key
        ):
            raise _LoginFailed(
                "Authentication failed during authentication due to invalid credentials"
            )
        server_signature = self._hmac(self._hmac(self._salted, b"Server Key"), message)
        return b"v=" + base64.b64encode(server_signature)

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self._hash).digest()


# -- the Kafka wire format, as far as the login needs it ---------------------------------------


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _parse(frame: bytes) -> _Request:
    """The request header (v1, or v2 for SaslAuthenticate v2, the only flexible request a
    login sends) and the body after it."""
    api_key, version, correlation_id = struct.unpack_from(">hhi", frame, 0)
    _, at = _string(frame, 8)  # client id
    if api_key == _SASL_AUTHENTICATE and version >= 2:
        at = _skip_tags(frame, at)
    return _Request(api_key, version, correlation_id, frame[at:])


def _string(data: bytes, at: int) -> tuple[str, int]:
    (size,) = struct.unpack_from(">h", data, at)
    at += 2
    if size < 0:
        return "", at
    return data[at : at + size].decode(), at + size


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _skip_tags(data: bytes, at: int) -> int:
    count, at = _varint(data, at)
    for _ in range(count):
        _, at = _varint(data, at)
        size, at = _varint(data, at)
        at += size
    return at


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _auth_bytes(request: _Request) -> bytes:
    if request.version >= 2:
        size, at = _varint(request.body, 0)
        return request.body[at : at + size - 1]
    (size,) = struct.unpack_from(">i", request.body, 0)
    return request.body[4 : 4 + size]


def _handshake_response(error: int, mechanisms: Sequence[str]) -> bytes:
    out = struct.pack(">hi", error, len(mechanisms))
    for name in mechanisms:
        out += struct.pack(">h", len(name)) + name.encode()
    return out


def _authenticate_response(
    request: _Request, error: int, auth_bytes: bytes, message: str | None = None
) -> bytes:
    text = message.encode() if message is not None else None
    if request.version >= 2:
        out = struct.pack(">h", error)
        out += _encode_varint(0) if text is None else _encode_varint(len(text) + 1) + text
        out += _encode_varint(len(auth_bytes) + 1) + auth_bytes
        return out + struct.pack(">q", 3_600_000) + b"\0"
    out = struct.pack(">h", error)
    out += struct.pack(">h", -1) if text is None else struct.pack(">h", len(text)) + text
    out += struct.pack(">i", len(auth_bytes)) + auth_bytes
    return out + (struct.pack(">q", 3_600_000) if request.version >= 1 else b"")


async def _send(writer: asyncio.StreamWriter, request: _Request, body: bytes) -> None:
    """A response: correlation id (and empty tags for SaslAuthenticate v2), then `body`."""
    header = struct.pack(">i", request.correlation_id)
    if request.api_key == _SASL_AUTHENTICATE and request.version >= 2:
        header += b"\0"
    payload = header + body
    writer.write(struct.pack(">i", len(payload)) + payload)
    await writer.drain()
