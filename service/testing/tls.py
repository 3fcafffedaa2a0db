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
import contextlib
import datetime
import ipaddress
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from service.embedded import EmbeddedBroker

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


class TlsTerminator:
    """Accepts TLS on ``host:port`` (a free port when None) and relays each connection to
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
        self.upstream = upstream
        self.host = host
        self.port = port
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(certificates.server_cert, certificates.server_key)
        if client_ca is not None:
            self._context.verify_mode = ssl.CERT_REQUIRED
            self._context.load_verify_locations(cafile=client_ca)
        self._authenticate = authenticate
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_quiet_handshake_errors)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-terminator")
        self._thread.daemon = True

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"{self.host}:{self.port}"

    def start(self) -> TlsTerminator:
        """Listen (the port is bound when this returns) and serve in the background."""
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self._context, ssl_handshake_timeout=10
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.upstream is None:
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_writer)
            try:
                if self._authenticate is None or await self._authenticate(
                    reader, writer, up_reader, up_writer
                ):
                    await asyncio.gather(_relay(reader, up_writer), _relay(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                _close(up_writer)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("tls terminator connection ended: %r", exc)
        finally:
            self._writers.discard(writer)
            _close(writer)

    def stop(self) -> None:
        """Close the listener and every connection, and end the loop's thread."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                _close(writer)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> TlsTerminator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy `reader` to `writer` until end of stream, then half-close `writer`."""
    try:
        while chunk := await reader.read(_RELAY_CHUNK):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        _close(writer)


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


def _quiet_handshake_errors(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    # a refused handshake (wrong CA, a plaintext client) is what some tests want: not an error
    log.debug("tls terminator: %s %r", context.get("message"), context.get("exception"))


class SecuredBroker:
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
        self._log_path = log_path
        self.broker: EmbeddedBroker | None = None

    @property
    def bootstrap(self) -> str:
        """The TLS address every client connects to."""
        return self.terminator.address

    @property
    def plaintext_bootstrap(self) -> str:
        """The broker's own plaintext address."""
        assert self.broker is not None
        return self.broker.bootstrap

    def start(self) -> SecuredBroker:
        """Start the terminator, then the broker advertising it; stop both on failure."""
        self.terminator.start()
        try:
            self.broker = EmbeddedBroker(
                advertised=self.terminator.address, log_path=self._log_path
            ).start()
        except BaseException:
            self.terminator.stop()
            raise
        assert self.broker.port is not None
        self.terminator.upstream = (self.broker.host, self.broker.port)
        return self

    def stop(self) -> None:
        """Stop the broker, then the terminator."""
        if self.broker is not None:
            self.broker.stop()
        self.terminator.stop()

    def __enter__(self) -> SecuredBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
