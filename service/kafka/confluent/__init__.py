"""The transport on confluent-kafka (librdkafka), selected with ``kafka.client=confluent``.

Same interface and semantics as the kafka-python modules beside it (see
`service.transport`): manual commits by the checkpoint only, rebalances through the
same `RebalanceHandler`, failed deliveries kept and sent again by ``flush``, the changelog
read to its end with the last record per key. What differs is where the work happens:
librdkafka fetches, batches, compresses and checksums on its own C threads, and runs the
rebalance callbacks inside ``consume``/``poll`` on the calling thread. Needs the
``confluent`` extra (``pip install 'sensorcast[confluent]'``); nothing here is imported
unless that client is selected.
"""
