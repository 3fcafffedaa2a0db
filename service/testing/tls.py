"""A TLS broker for tests: certificates made on the spot, and a TLS terminator in front of
the embedded broker (which listens in plaintext only).

- `make_certificates` writes a CA, a server certificate for 127.0.0.1 and localhost signed by
  it, a client certificate for mutual TLS, and an unrelated CA (the "wrong CA").
- `TlsTerminator` accepts TLS connections on a loopback port (with client certificates
  when asked) and relays each one, in plaintext, to the broker; an `authenticate` coroutine
  may run first (`service.testing.sasl` ends SASL there).
- `SecuredBroker` starts both, the broker advertising the terminator's port, so every client
  (bootstrap and the connections that follow from metadata) goes through TLS.

Needs the `cryptography` package (the ``dev`` extra).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from service.testing.relay import BrokerBehind, Relay, close_quietly

__all__ = ["Authenticate", "Certificates", "SecuredBroker", "TlsTerminator", "make_certificates"]

log = logging.getLogger(__name__)

#: Runs on a new connection before it is relayed: (client reader, client writer, broker
#: reader, broker writer) -> whether to relay it (False: it is closed).
Authenticate = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamWriter],
    Awaitable[bool],
]

_RELAY_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Certificates:
    """PEM files: `ca` signs `server_cert` (127.0.0.1, localhost) and `client_cert`;
    `other_ca` signs nothing here."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_certificates(folder: Path) -> Certificates:
    """Write a fresh set of `Certificates` (EC P-256, valid for a day) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _self_signed("Sensorcast test CA")
    _, other_cert = _self_signed("Sensorcast unrelated CA")
    server_key, server_cert = _issued("127.0.0.1", ca_key, ca_cert, server=True)
    client_key, client_cert = _issued("sensorcast-client", ca_key, ca_cert, server=False)
    files = {
        "ca": _cert_pem(ca_cert),
        "server_cert": _cert_pem(server_cert),
        "server_key": _key_pem(server_key),
        "client_cert": _cert_pem(client_cert),
        "client_key": _key_pem(client_key),
        "other_ca": _cert_pem(other_cert),
    }
    paths: dict[str, Path] = {}
    for name, pem in files.items():
        paths[name] = folder / f"{name}.pem"
        paths[name].write_bytes(pem)
    return Certificates(**paths)


def _self_signed(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issued(
    name: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = _builder(subject, ca_cert.subject, key).add_extension(
        x509.ExtendedKeyUsage([usage]), critical=False
    )
    if server:
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class TlsTerminator(Relay):
    """Accepts TLS on ``host:port`` (a free port when 0) and relays each connection to
    `upstream` in plaintext, on an event loop in a thread of its own.

    `client_ca`: require a client certificate signed by it (mutual TLS). `authenticate`:
    run on each connection before relaying. `upstream` may be set after `start` (it is
    looked up per connection): connections that come earlier are closed.
    """

    def __init__(
        self,
        certificates: Certificates,
        upstream: tuple[str, int] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_ca: Path | None = None,
        authenticate: Authenticate | None = None,
    ) -> None:
        super().__init__(upstream, host=host, port=port, name="tls-terminator")
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(certificates.server_cert, certificates.server_key)
        if client_ca is not None:
            self._context.verify_mode = ssl.CERT_REQUIRED
            self._context.load_verify_locations(cafile=client_ca)
        self._authenticate = authenticate
        self._loop.set_exception_handler(_quiet_handshake_errors)

    def _listen_options(self) -> dict[str, Any]:
        return {"ssl": self._context, "ssl_handshake_timeout": 10}

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        if self._authenticate is None or await self._authenticate(
            reader, writer, up_reader, up_writer
        ):
            await asyncio.gather(_relay(reader, up_writer), _relay(up_reader, writer))


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy `reader` to `writer` until end of stream, then half-close `writer`."""
    try:
        while chunk := await reader.read(_RELAY_CHUNK):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        close_quietly(writer)


def _quiet_handshake_errors(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    # a refused handshake (wrong CA, a plaintext client) is what some tests want: not an error
    log.debug("tls terminator: %s %r", context.get("message"), context.get("exception"))


class SecuredBroker(BrokerBehind):
    """The embedded broker behind a `TlsTerminator`, advertising the terminator's port.

    `bootstrap` is the TLS address; `plaintext_bootstrap` the broker's own (for checks that
    bypass TLS). `client_ca` and `authenticate` are the terminator's.
    """

    def __init__(
        self,
        certificates: Certificates,
        *,
        client_ca: Path | None = None,
        authenticate: Authenticate | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.certificates = certificates
        self.terminator = TlsTerminator(
            certificates, client_ca=client_ca, authenticate=authenticate
        )
        super().__init__(self.terminator, log_path=log_path)

    @property
    def plaintext_bootstrap(self) -> str:
        """The broker's own plaintext address."""
        assert self.broker is not None
        return self.broker.bootstrap
