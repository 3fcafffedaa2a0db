"""Graphs altered after they were built, for the golden-vector tests.

Models with golden vectors come from `service.testing.build_onnx_lstm`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def perturb_weight(
    proto: onnx.ModelProto, factor: float = 1.01, name: str | None = None
) -> onnx.ModelProto:
    """A copy with the largest-magnitude entry of initializer `name` (default: the largest
    initializer) scaled by `factor`."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = list(out.graph.initializer)
    if name is None:
        init = max(inits, key=lambda t: numpy_helper.to_array(t).size)
    else:
        init = next(t for t in inits if t.name == name)
    values = numpy_helper.to_array(init).copy()
    values.flat[int(np.argmax(np.abs(values)))] *= factor
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    return out
