"""A TCP relay on an event loop in a thread of its own: the part the TLS terminator
(`service.testing.tls`) and the request-counting wiretap (`service.testing.wiretap`) share.

`BrokerBehind` is the embedded broker behind one, advertising its address. A subclass of
`Relay` gives `_pipe`, what is done with one accepted connection once its upstream
connection is open, and may give `_listen_options` (TLS, for one). `upstream` is looked up
per connection, so it may be set after `start`; connections that come earlier are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from service.embedded import EmbeddedBroker

__all__ = ["BrokerBehind", "Relay", "close_quietly"]

log = logging.getLogger(__name__)


def close_quietly(writer: asyncio.StreamWriter) -> None:
    """Close `writer`, whatever state its connection is in."""
    with contextlib.suppress(Exception):
        writer.close()


class Relay(ABC):
    """Listens on ``host:port`` (a free port when 0) and relays each connection to
    `upstream`; see the module docstring."""

    def __init__(
        self,
        upstream: tuple[str, int] | None,
        *,
        host: str,
        port: int,
        name: str,
    ) -> None:
        self.upstream = upstream
        self.host = host
        self.port = port
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name)
        self._thread.daemon = True

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"{self.host}:{self.port}"

    def start(self) -> Self:
        """Listen (the port is bound when this returns) and relay in the background."""
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _listen_options(self) -> dict[str, Any]:
        """More keyword arguments for `asyncio.start_server`."""
        return {}

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(
            self._serve, self.host, self.port, **self._listen_options()
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.upstream is None:
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_writer)
            try:
                await self._pipe(reader, writer, up_reader, up_writer)
            finally:
                self._writers.discard(up_writer)
                close_quietly(up_writer)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("%s connection ended: %r", self._name, exc)
        finally:
            self._writers.discard(writer)
            close_quietly(writer)

    @abstractmethod
    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Relay one accepted connection (`reader`, `writer`) and its upstream one."""

    def stop(self) -> None:
        """Close the listener and every connection, and end the loop's thread."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                close_quietly(writer)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class BrokerBehind:
    """The embedded broker behind a `Relay`, advertising the relay's address: every client
    connects through the relay. `relay` is started first and stopped last."""

    def __init__(self, relay: Relay, *, log_path: Path | None = None) -> None:
        self.relay = relay
        self._log_path = log_path
        self.broker: EmbeddedBroker | None = None

    @property
    def bootstrap(self) -> str:
        """The address every client connects to (the relay's)."""
        return self.relay.address

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self.broker.pid if self.broker is not None else None

    def start(self) -> Self:
        """Start the relay, then the broker advertising it; stop both on failure."""
        self.relay.start()
        try:
            self.broker = EmbeddedBroker(
                advertised=self.relay.address, log_path=self._log_path
            ).start()
        except BaseException:
            self.relay.stop()
            raise
        assert self.broker.port is not None
        self.relay.upstream = (self.broker.host, self.broker.port)
        return self

    def stop(self) -> None:
        """Stop the broker, then the relay."""
        if self.broker is not None:
            self.broker.stop()
        self.relay.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
