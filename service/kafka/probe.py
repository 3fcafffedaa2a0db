"""Why a broker refuses this client, in one line an operator can act on.

The client libraries say little when the security settings are wrong: kafka-python that it
was "unable to bootstrap", librdkafka that the "broker transport failed"; the reason is in
their debug logs. `diagnose` connects to the first bootstrap server itself, as the settings
say, and names what fails: a certificate that does not verify, a plaintext port for a TLS
client or a TLS port for a plaintext one, a SASL mechanism the broker does not offer, or a
login the broker refuses (with the broker's own words). The password goes over the wire as
the clients would send it and never into a message.

`tls_preflight` runs it before a TLS client connects: kafka-python (3.0) never times out a
TLS handshake, and a plaintext port leaves the hello unanswered. `refusal` is the message
the service and the tools stop with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct

from service.config import KafkaSettings, sasl_password
from service.kafka.security import tls_context, uses_sasl, uses_tls

__all__ = ["diagnose", "refusal", "tls_preflight", "unreachable"]

_CLIENT_ID = b"sensorcast"
_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 18, 17, 36
_UNSUPPORTED_SASL_MECHANISM = 33
_SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
_TLS_HELLO_TIMEOUT = 1.0  # seconds


def diagnose(settings: KafkaSettings, timeout: float = 3.0) -> str | None:
    """Why the first bootstrap server refuses this client for good, in one line; None when
    nothing is listening (the broker may be starting), the handshake broke off without a
    reason, or everything the settings ask for succeeds."""
    host, port = _first_server(settings)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    with raw:
        if not uses_tls(settings):
            reason = _tls_port(raw, host, port, settings.security_protocol)
            if reason is None and uses_sasl(settings):
                return _login(settings, timeout)
            return reason
        reason, secured = _tls_refusal(settings, raw, host, port)
    if secured:
        return _login(settings, timeout) if uses_sasl(settings) else None
    if reason is None and _plaintext_kafka(host, port, timeout):
        return (
            f"{host}:{port} is a plaintext Kafka port and kafka.security_protocol is "
            f"{settings.security_protocol}: use the broker's TLS port, or PLAINTEXT"
        )
    return reason


def tls_preflight(settings: KafkaSettings) -> str | None:
    """`diagnose` before a TLS client connects (None without TLS).

    A handshake that succeeds costs one connection of a few milliseconds.
    """
    return diagnose(settings) if uses_tls(settings) else None


def refusal(settings: KafkaSettings, reason: str) -> str:
    """``cannot connect to the broker at <bootstrap>: <reason>``."""
    return f"cannot connect to the broker at {settings.bootstrap_servers}: {reason}"


def unreachable(settings: KafkaSettings, error: BaseException) -> str:
    """The tools' one line when a client could not connect: the refusal `diagnose` finds,
    else the client's `error`."""
    reason = diagnose(settings) or str(error) or type(error).__name__
    return refusal(settings, reason)


def _first_server(settings: KafkaSettings) -> tuple[str, int]:
    first = settings.bootstrap_servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host.strip("[]") or first, int(port) if port.isdigit() else 9092


# -- TLS -----------------------------------------------------------------------------------


def _tls_refusal(
    settings: KafkaSettings, raw: socket.socket, host: str, port: int
) -> tuple[str | None, bool]:
    """(why the TLS handshake failed or None, whether it succeeded)."""
    try:
        with tls_context(settings).wrap_socket(raw, server_hostname=host):
            return None, True
    except ssl.SSLCertVerificationError as exc:
        return (
            f"the TLS certificate of {host}:{port} does not verify ({exc.verify_message}): "
            "check kafka.ssl_cafile (and kafka.ssl_check_hostname)"
        ), False
    except ssl.SSLError as exc:
        return f"TLS handshake with {host}:{port} failed ({exc.reason or exc})", False
    except OSError:
        return None, False  # closed or timed out: maybe a plaintext port, asked next


def _tls_port(raw: socket.socket, host: str, port: int, protocol: str) -> str | None:
    """A message when `raw` answers a TLS hello with a server hello: a TLS port."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    raw.settimeout(_TLS_HELLO_TIMEOUT)  # a TLS port answers in milliseconds
    try:
        with probe.wrap_socket(raw, server_hostname=host):
            pass
    except (ssl.SSLError, OSError):
        return None
    return (
        f"{host}:{port} is a TLS port and kafka.security_protocol is {protocol}: "
        "use SSL (or SASL_SSL)"
    )


def _plaintext_kafka(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` answers a plaintext Kafka ApiVersions (v0) request."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_frame(_API_VERSIONS, 0, b""))
            head = _recv_exactly(sock, 8)
    except OSError:
        return False
    correlation_id: int = struct.unpack(">ii", head)[1]
    return correlation_id == 1


# -- SASL ----------------------------------------------------------------------------------


class _Refused(Exception):
    """The broker refused the login; the message is its reason."""


class _NotOffered(Exception):
    """The broker does not offer the configured mechanism; the message says which it does."""


def _login(settings: KafkaSettings, timeout: float) -> str | None:
    """Log in as the settings say on a connection of our own; why the broker refused, or
    None when it accepted (or the connection broke off)."""
    host, port = _first_server(settings)
    mechanism, user = settings.sasl_mechanism or "", settings.sasl_username or ""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if uses_tls(settings):
                with tls_context(settings).wrap_socket(raw, server_hostname=host) as sock:
                    _authenticate(sock, settings)
            else:
                _authenticate(raw, settings)
    except _Refused as exc:
        return (
            f"the broker refused the SASL login of {user!r} ({mechanism}): {exc}; check "
            "kafka.sasl_username and the password (kafka.sasl_password_file or "
            "kafka.sasl_password)"
        )
    except _NotOffered as exc:
        return f"the broker does not offer SASL {mechanism}: {exc}; set kafka.sasl_mechanism"
    except (OSError, ValueError, struct.error):
        return None
    return None


def _authenticate(sock: socket.socket, settings: KafkaSettings) -> None:
    """SaslHandshake (v1), then SaslAuthenticate (v1) rounds for PLAIN or SCRAM; raises
    `_Refused` with the broker's reason."""
    mechanism = settings.sasl_mechanism or ""
    user, password = settings.sasl_username or "", sasl_password(settings) or ""
    body = _exchange(sock, _SASL_HANDSHAKE, _string(mechanism.encode()))
    error, (count,) = struct.unpack_from(">h", body, 0)[0], struct.unpack_from(">i", body, 2)
    if error == _UNSUPPORTED_SASL_MECHANISM:
        offered, at = [], 6
        for _ in range(count):
            (size,) = struct.unpack_from(">h", body, at)
            offered.append(body[at + 2 : at + 2 + size].decode())
            at += 2 + size
        raise _NotOffered(f"it offers {', '.join(offered) or 'no mechanism'}")
    if error:
        raise _Refused(f"SaslHandshake error code {error}")
    if mechanism == "PLAIN":
        _authenticate_round(sock, b"\0" + user.encode() + b"\0" + password.encode())
        return
    _scram(sock, _SCRAM_HASHES[mechanism], user, password)


def _scram(sock: socket.socket, hash_name: str, user: str, password: str) -> None:
    """The client side of SCRAM (RFC 5802): two rounds, the server's signature checked."""
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user.replace('=', '=3D').replace(',', '=2C')},r={nonce}"
    server_first = _authenticate_round(sock, f"n,,{first_bare}".encode()).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    if "e" in fields:
        raise _Refused(fields["e"])
    salted = hashlib.pbkdf2_hmac(
        hash_name, password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    final_bare = f"c=biws,r={fields['r']}"
    message = f"{first_bare},{server_first},{final_bare}".encode()
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    stored_key = hashlib.new(hash_name, client_key).digest()
    signature = hmac.new(stored_key, message, hash_name).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
    server_final = _authenticate_round(sock, f"{final_bare},p={proof.decode()}".encode())
    if server_final.startswith(b"e="):
        raise _Refused(server_final[2:].decode(errors="replace"))


def _authenticate_round(sock: socket.socket, token: bytes) -> bytes:
    """One SaslAuthenticate (v1) round: the server's token, or `_Refused`."""
    body = _exchange(sock, _SASL_AUTHENTICATE, struct.pack(">i", len(token)) + token, version=1)
    (error,) = struct.unpack_from(">h", body, 0)
    (size,) = struct.unpack_from(">h", body, 2)
    text = body[4 : 4 + size].decode(errors="replace") if size >= 0 else ""
    at = 4 + max(size, 0)
    if error:
        raise _Refused(text or f"SaslAuthenticate error code {error}")
    (length,) = struct.unpack_from(">i", body, at)
    return body[at + 4 : at + 4 + max(length, 0)]


# -- the Kafka wire format, as far as the probes need it ---------------------------------------


def _string(data: bytes) -> bytes:
    return struct.pack(">h", len(data)) + data


def _frame(api_key: int, version: int, body: bytes) -> bytes:
    """A request with header v1 (correlation id 1, our client id), length-prefixed."""
    payload = struct.pack(">hhi", api_key, version, 1) + _string(_CLIENT_ID) + body
    return struct.pack(">i", len(payload)) + payload


def _exchange(sock: socket.socket, api_key: int, body: bytes, version: int = 1) -> bytes:
    """Send one request and return its response's body (after the correlation id)."""
    sock.sendall(_frame(api_key, version, body))
    (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
    return _recv_exactly(sock, size)[4:]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data
