"""The step-model seam: a `StepModel` protocol and its onnxruntime implementation.

`OnnxStepModel` is the only place in the project that imports onnxruntime. Anything with a
`card` and a `step` method honouring the contract in `service.modelcard` can stand in for it
(tests use the numpy models in `service.testing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort

from service.errors import InferenceError, ModelContractError
from service.modelcard import INPUT_NAME, OUTPUT_NAME, ModelCard, model_fingerprint
from service.registry import LoadedModel

__all__ = ["OnnxStepModel", "StepModel", "fingerprint_of"]


@runtime_checkable
class StepModel(Protocol):
    """One recurrent step over a batch of streams.

    `x` is float32 ``[batch, time, n_features]``, already scaled; `states` follow
    ``card.states`` order, each batched on its ``batch_axis``. Returns ``y`` as float32
    ``[batch, time, horizon, n_targets]`` (scaled) and the new states, in the same order and
    layout as the inputs. The returned arrays belong to the caller (the engine
    de-normalises ``y`` in place); `x` and `states` are only valid during the call (the
    engine reuses their memory for the next round).
    """

    card: ModelCard

    def step(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run `x` through the model from `states`; returns ``y`` and the new states, as above."""


class OnnxStepModel:
    """A step model served by one onnxruntime `InferenceSession`.

    The defaults suit small recurrent models on a shared CPU: one intra-op thread, one
    inter-op thread and no spinning, so an idle service does not burn a core. Batching across
    streams, not threads, is what makes these models fast.
    """

    def __init__(
        self,
        card: ModelCard,
        onnx_bytes: bytes,
        *,
        intra_op_threads: int = 1,
        spinning: bool = False,
    ) -> None:
        if intra_op_threads < 1:
            raise ModelContractError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spinning else "0"
        )
        options.add_session_config_entry(
            "session.inter_op.allow_spinning", "1" if spinning else "0"
        )
        try:
            self._session = ort.InferenceSession(
                onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelContractError(
                f"{card.ref}: onnxruntime cannot load the model: {exc}"
            ) from exc
        self.card = card
        self.graph_bytes = onnx_bytes
        self.fingerprint = model_fingerprint(card, onnx_bytes)
        self.intra_op_threads = intra_op_threads
        self._state_names = [s.name for s in card.states]
        self._output_names = [OUTPUT_NAME, *(s.output_name for s in card.states)]
        session_inputs = {i.name for i in self._session.get_inputs()}
        missing = {INPUT_NAME, *self._state_names} - session_inputs
        if missing:
            raise ModelContractError(f"{card.ref}: the graph lacks inputs {sorted(missing)}")

    @property
    def session_options(self) -> ort.SessionOptions:
        """The onnxruntime session's options (threads, spinning), for diagnostics."""
        return self._session.get_session_options()

    @classmethod
    def from_loaded(
        cls, loaded: LoadedModel, *, intra_op_threads: int = 1, spinning: bool = False
    ) -> OnnxStepModel:
        """Build from a registry entry (its card and graph are already checked to agree)."""
        return cls(
            loaded.card, loaded.onnx_bytes, intra_op_threads=intra_op_threads, spinning=spinning
        )

    def step(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One onnxruntime call, as `StepModel.step` says; raises `InferenceError` when it fails."""
        feed = dict(zip(self._state_names, states, strict=True))
        feed[INPUT_NAME] = x
        try:
            y, *new_states = self._session.run(self._output_names, feed)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceError(
                f"{self.card.ref}: inference failed on a batch of {len(x)}: {exc}"
            ) from exc
        return y, new_states


def fingerprint_of(model: StepModel) -> bytes:
    """The identity of `model`'s states (`service.modelcard.model_fingerprint`): of its
    graph and card when it is an `OnnxStepModel`, of its card otherwise."""
    if isinstance(model, OnnxStepModel):
        return model.fingerprint
    return model_fingerprint(model.card)
