"""The transport on kafka-python, the default ``kafka.client``: the input `source`, the
forecast and dead-letter `sink`, the state `changelog` writer and reader, and `topics`
checked and created at start-up; `connect` opens them. `confluent/` holds the same on
confluent-kafka. What is the same for both clients lives above them (`service.transport`,
`service.delivery`, `service.changelog`); record bytes are `service.codec`'s.
"""
