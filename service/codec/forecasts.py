"""Forecasts as the JSON bytes of the forecast topic (the message of docs/service.md).

`ForecastEncoder.encode_batch` writes a whole `ForecastBatch` in one pass over its columns
(the service's hot path); `encode` writes one `Forecast` object the same way (tools, tests).
"""

from __future__ import annotations

import numpy as np
import orjson
import pydantic_core

from service.core.readings import Forecast, ForecastBatch
from service.modelcard import ModelCard

__all__ = ["ForecastEncoder"]


class ForecastEncoder:
    """Forecast -> JSON bytes: stream id, ts, model, horizon_ts, forecast per target, warm,
    source partition and offset, and (when forecasts are scored) the reading's anomaly:
    ``{"flag": <bool>, "score": <float>, "targets": [<names over the threshold>]}``."""

    def __init__(self, card: ModelCard) -> None:
        self._model = {"name": card.name, "version": card.version}
        self._targets = list(card.targets)
        # the fixed text between a batch's numbers (see `encode_batch`)
        self._model_json = b',"model":' + orjson.dumps(self._model) + b',"horizon_ts":['
        self._target_heads = [
            (b'],"forecast":{' if i == 0 else b"],") + orjson.dumps(target) + b":["
            for i, target in enumerate(self._targets)
        ]

    def encode(self, forecast: Forecast) -> bytes:
        """One forecast as the JSON bytes of its record."""
        columns = forecast.values.T.tolist()
        message = {
            "stream_id": forecast.stream_id,
            "ts": forecast.ts,
            "model": self._model,
            "horizon_ts": forecast.horizon_ts,
            "forecast": dict(zip(self._targets, columns, strict=True)),
            "warm": forecast.warm,
            "partition": forecast.partition,
            "offset": forecast.offset,
        }
        if forecast.anomalous is not None:
            message["anomaly"] = self._anomaly(round(forecast.anomaly, 3), forecast.anomalous)
        return pydantic_core.to_json(message)

    def _anomaly(self, score: float, over: np.ndarray) -> dict[str, object]:
        flagged = [t for t, o in zip(self._targets, over.tolist(), strict=True) if o]
        return {"flag": bool(flagged), "score": score, "targets": flagged}

    def _anomalies(self, forecasts: ForecastBatch) -> list[bytes] | None:
        """Each row's ``,"anomaly":{...}`` member as JSON text (None when forecasts are not
        scored)."""
        if forecasts.anomaly is None or forecasts.anomalous is None:
            return None
        scores = _items(orjson.dumps(np.round(forecasts.anomaly.astype(np.float64), 3).tolist()))
        over = forecasts.anomalous
        if not over.any():
            return [b',"anomaly":{"flag":false,"score":' + s + b',"targets":[]}' for s in scores]
        # the text around the score, per pattern of targets over their threshold
        texts: dict[tuple[bool, ...], tuple[bytes, bytes]] = {}
        out = []
        for score, row in zip(scores, map(tuple, over.tolist()), strict=True):
            text = texts.get(row)
            if text is None:
                flagged = [t for t, o in zip(self._targets, row, strict=True) if o]
                flag = b"true" if flagged else b"false"
                text = texts[row] = (
                    b',"anomaly":{"flag":' + flag + b',"score":',
                    b',"targets":' + orjson.dumps(flagged) + b"}",
                )
            out.append(text[0] + score + text[1])
        return out

    def encode_batch(self, forecasts: ForecastBatch) -> list[bytes]:
        """Every row of `forecasts`, as `encode` would write it, in one pass over columns.

        The numbers of all rows are written by one orjson call per column (float32 forecast
        values at float32 precision: the shortest text that reads back to the same float32,
        ~30% shorter messages than float64 digits) and cut into rows; each message is
        spliced from those pieces, with the members in `encode`'s order.
        """
        n = len(forecasts)
        if n == 0:
            return []
        dumps, numpy_option = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
        by_target = np.ascontiguousarray(forecasts.values.transpose(0, 2, 1))
        values = _rows(dumps(by_target, option=numpy_option), depth=3)
        horizons = _rows(dumps(forecasts.horizon_ts(), option=numpy_option), depth=2)
        stamps = _items(dumps(forecasts.ts.tolist()))
        partitions = _items(dumps(forecasts.partitions.tolist()))
        offsets = _items(dumps(forecasts.offsets.tolist()))
        anomalies = self._anomalies(forecasts)
        heads, model = self._target_heads, self._model_json
        out = []
        for i, (stream_id, warm) in enumerate(
            zip(forecasts.stream_ids, forecasts.warm.tolist(), strict=True)
        ):
            parts = [b'{"stream_id":', _string(stream_id), b',"ts":', stamps[i], model, horizons[i]]
            for head, column in zip(heads, values[i].split(b"],["), strict=True):
                parts.append(head)
                parts.append(column)
            parts.append(
                b']},"warm":true,"partition":' if warm else b']},"warm":false,"partition":'
            )
            parts.append(partitions[i])
            parts.append(b',"offset":')
            parts.append(offsets[i])
            if anomalies is not None:
                parts.append(anomalies[i])
            parts.append(b"}")
            out.append(b"".join(parts))
        return out


def _string(text: str) -> bytes:
    """`text` as a JSON string, as orjson writes it (orjson's own call costs microseconds
    per call in a loop: it allocates a buffer each time)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return b'"' + text.encode() + b'"'
    return orjson.dumps(text)


def _items(text: bytes) -> list[bytes]:
    """The items of a JSON array of numbers, as text."""
    return text[1:-1].split(b",")


def _rows(text: bytes, depth: int) -> list[bytes]:
    """The rows of a `depth`-dimensional JSON array of numbers, each without its outer
    brackets (a 3-dimensional row's columns are still separated by ``],[``)."""
    inner = text[depth:-depth]
    return inner.split(b"]" * (depth - 1) + b",[" + b"[" * (depth - 2))
