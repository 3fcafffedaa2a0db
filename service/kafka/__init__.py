"""The transport on kafka-python, the default ``kafka.client``: the input `source`, the
forecast and dead-letter `sink`, the state `changelog` writer and reader, and `topics`
checked and created at start-up; `connect` opens them. `confluent/` holds the same on
confluent-kafka. `security` maps the TLS and SASL settings onto each library's options
(every client of both is built with them); `probe` says in one line why a broker refuses
them. What is the same for both clients lives above them (`service.transport`,
`service.delivery`, `service.changelog`); record bytes are `service.codec`'s.
"""
