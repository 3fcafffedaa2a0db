"""TLS and SASL for every Kafka client the project opens, on both client libraries.

``kafka.security_protocol``, ``kafka.sasl_*`` and ``kafka.ssl_*`` are mapped here, once per
library: `kafka_python_options` gives kafka-python's keyword arguments, `librdkafka_options`
confluent-kafka's config keys. Every consumer, producer and admin client (the service's
source, sink, changelog writer and reader, topic checks, and the replay and tail tools)
takes its security from one of the two. Neither imports its library, so both are testable
without it.

The password is read (`service.config.sasl_password`) when the options are built and handed
to kafka-python as a `MaskedStr`: kafka-python logs an admin client's whole configuration at
DEBUG, and the dict's text then shows the mask, not the password.

Why a broker refuses these settings is `service.kafka.probe`'s.
"""

from __future__ import annotations

import ssl
from typing import Any

from service.config import KafkaSettings, sasl_password

__all__ = [
    "MaskedStr",
    "kafka_python_options",
    "librdkafka_options",
    "tls_context",
    "uses_sasl",
    "uses_tls",
]

#: What a masked secret shows, as `pydantic.SecretStr` does.
MASK = "**********"


class MaskedStr(str):
    """A secret that is a `str` to the code that needs it and masked in every ``repr``.

    ``repr`` is what a dict, a list or an exception shows of it; ``str()`` and ``format``
    still give the value, so it must not be interpolated into a message itself.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK)


def uses_tls(settings: KafkaSettings) -> bool:
    """Whether connections are TLS (``SSL`` or ``SASL_SSL``)."""
    return settings.security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: KafkaSettings) -> bool:
    """Whether connections authenticate with SASL (``SASL_PLAINTEXT`` or ``SASL_SSL``)."""
    return settings.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def kafka_python_options(settings: KafkaSettings) -> dict[str, Any]:
    """kafka-python keyword arguments for the configured protocol, TLS files and SASL login
    (for `KafkaConsumer`, `KafkaProducer` and `KafkaAdminClient` alike).

    Raises `ConfigError` when the password file cannot be read.
    """
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if uses_tls(settings):
        options["ssl_check_hostname"] = settings.ssl_check_hostname
        if settings.ssl_cafile is not None:
            options["ssl_cafile"] = str(settings.ssl_cafile)
        if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
            options["ssl_certfile"] = str(settings.ssl_certfile)
            options["ssl_keyfile"] = str(settings.ssl_keyfile)
    if uses_sasl(settings):
        password = sasl_password(settings)
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = MaskedStr(password) if password is not None else None
    return options


def librdkafka_options(settings: KafkaSettings) -> dict[str, Any]:
    """confluent-kafka (librdkafka) config keys for the configured protocol, TLS files and
    SASL login (for `Consumer`, `Producer` and `AdminClient` alike).

    librdkafka treats ``sasl.password`` as sensitive and never logs it. Raises `ConfigError`
    when the password file cannot be read.
    """
    options: dict[str, Any] = {"security.protocol": settings.security_protocol}
    if uses_tls(settings):
        options["ssl.endpoint.identification.algorithm"] = (
            "https" if settings.ssl_check_hostname else "none"
        )
        if settings.ssl_cafile is not None:
            options["ssl.ca.location"] = str(settings.ssl_cafile)
        if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
            options["ssl.certificate.location"] = str(settings.ssl_certfile)
            options["ssl.key.location"] = str(settings.ssl_keyfile)
    if uses_sasl(settings):
        options["sasl.mechanism"] = settings.sasl_mechanism
        options["sasl.username"] = settings.sasl_username
        options["sasl.password"] = sasl_password(settings)
    return options


def tls_context(settings: KafkaSettings) -> ssl.SSLContext:
    """A client TLS context as both libraries build it from the settings: the configured CA
    (else the system's), the client certificate for mutual TLS, host name checks as set."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = settings.ssl_check_hostname
    if settings.ssl_cafile is not None:
        context.load_verify_locations(cafile=settings.ssl_cafile)
    else:
        context.load_default_certs()
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    return context
