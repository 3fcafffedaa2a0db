#!/bin/sh
# Feeds the compose stack with simulated sensors: `sensorcast replay synthetic`, pass after pass.
#
# Readings are spaced by the model's period (300 s) and start a year ago, so the daily cycles
# look like the data the model was trained on; each pass covers REPLAY_DAYS days of every
# stream and the next pass continues where it ended, so stream times keep increasing (a pass
# that restarted at the same times would only produce drops). The loop ends when the readings
# catch up with the present, after about a year of sensor time.
#
# Settings (environment): REPLAY_STREAMS (default 500), REPLAY_RATE readings per second
# (default 1000), REPLAY_DAYS days per pass (default 7), SENSORCAST_KAFKA__BOOTSTRAP_SERVERS,
# SENSORCAST_KAFKA__INPUT_TOPIC.
set -eu

streams="${REPLAY_STREAMS:-500}"
rate="${REPLAY_RATE:-1000}"
days="${REPLAY_DAYS:-7}"
bootstrap="${SENSORCAST_KAFKA__BOOTSTRAP_SERVERS:-kafka:19092}"
topic="${SENSORCAST_KAFKA__INPUT_TOPIC:-sensor-readings}"
period=300
steps=$((days * 86400 / period))
start=$(($(date +%s) / 86400 * 86400 - 365 * 86400))

# As the container's PID 1 this shell gets `docker stop`'s SIGTERM; pass it on to the replay.
child=""
trap 'if [ -n "${child}" ]; then kill -TERM "${child}" 2>/dev/null; wait "${child}"; fi; exit 143' TERM INT

while [ $((start + steps * period)) -le "$(date +%s)" ]; do
    echo "replay: ${streams} streams x ${steps} readings from $(date -u -d "@${start}" +%Y-%m-%dT%H:%MZ) at ${rate}/s"
    sensorcast replay synthetic \
        --bootstrap-servers "${bootstrap}" \
        --topic "${topic}" \
        --streams "${streams}" \
        --steps "${steps}" \
        --period "${period}" \
        --start-ts "${start}" \
        --rate "${rate}" \
        --quiet &
    child=$!
    wait "${child}"
    child=""
    start=$((start + steps * period))
done
echo "replay: caught up with the present; done"
