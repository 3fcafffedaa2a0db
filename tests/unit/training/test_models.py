from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from service.modelcard import Scaler, ScalerSet
from training.errors import TrainingConfigError
from training.models import KINDS, ModelConfig, build_model, last_value_map


def _model(kind: str, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    args: dict[str, object] = {
        "kind": kind,
        "n_features": 3,
        "n_targets": 2,
        "horizon": 4,
        "hidden": 5,
        "layers": 2,
    }
    args.update(kw)
    return build_model(ModelConfig(**args)).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_step_signature_and_state_shapes(kind: str) -> None:
    model = _model(kind)
    specs = model.state_specs()
    expected = {
        "lstm": [("h", (2, 5), 1), ("c", (2, 5), 1)],
        "gru": [("h", (2, 5), 1)],
        "rnn": [("h", (2, 5), 1)],
        "tdnn": [("lags", (12, 3), 0)],
    }[kind]
    assert [(s.name, s.shape, s.batch_axis) for s in specs] == expected
    states = model.init_states(7)
    assert [tuple(t.shape) for t in states] == [s.batched_shape(7) for s in specs]
    y, *out = model(torch.randn(7, 9, 3), *states)
    assert y.shape == (7, 9, 4, 2)
    assert [t.shape for t in out] == [t.shape for t in states]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("skip", [False, True])
def test_carrying_state_across_chunks_equals_one_long_pass(kind: str, skip: bool) -> None:
    model = _model(kind, skip=skip)
    x = torch.randn(3, 20, 3)
    with torch.no_grad():
        whole, *final = model(x, *model.init_states(3))
        states = model.init_states(3)
        parts = []
        for a, b in ((0, 1), (1, 8), (8, 13), (13, 20)):
            y, *states = model(x[:, a:b], *states)
            parts.append(y)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=0, atol=1e-6)
    for s, f in zip(states, final, strict=True):
        torch.testing.assert_close(s, f, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_rows_are_independent(kind: str) -> None:
    model = _model(kind)
    x = torch.randn(4, 6, 3)
    with torch.no_grad():
        together = model(x, *model.init_states(4))[0]
        alone = model(x[2:3], *model.init_states(1))[0]
    torch.testing.assert_close(together[2:3], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_no_output_depends_on_a_later_input(kind: str) -> None:
    model = _model(kind)
    x = torch.randn(1, 15, 3)
    changed = x.clone()
    changed[:, 10:] += 5.0
    with torch.no_grad():
        a = model(x, *model.init_states(1))[0]
        b = model(changed, *model.init_states(1))[0]
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_tdnn_taps_the_chosen_lags() -> None:
    # One feature, lags (1, 3): the MLP input at step t is (x[t], x[t-2]).
    model = build_model(
        ModelConfig(
            kind="tdnn", n_features=1, n_targets=1, horizon=1, hidden=2, layers=1, lags=(1, 3)
        )
    )
    captured: list[torch.Tensor] = []
    model.mlp.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))
    x = torch.arange(1.0, 6.0).reshape(1, 5, 1)
    with torch.no_grad():
        _, lags = model(x, *model.init_states(1))
    taps = captured[0][0]
    assert taps[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert taps[:, 1].tolist() == [0.0, 0.0, 1.0, 2.0, 3.0]
    assert lags[0, :, 0].tolist() == [3.0, 4.0, 5.0]


def test_dropout_only_between_layers_and_only_in_training() -> None:
    model = _model("lstm", dropout=0.5)
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        a = model(x, *model.init_states(2))[0]
        b = model(x, *model.init_states(2))[0]
    torch.testing.assert_close(a, b)


def test_config_round_trip_and_errors() -> None:
    config = ModelConfig(kind="tdnn", n_features=2, n_targets=1, horizon=3, lags=(1, 4), skip=True)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(TrainingConfigError, match="unknown cell kind"):
        ModelConfig(kind="transformer", n_features=1, n_targets=1, horizon=1)
    with pytest.raises(TrainingConfigError, match="lags"):
        ModelConfig(kind="tdnn", n_features=1, n_targets=1, horizon=1, lags=(0, 2))
    with pytest.raises(TrainingConfigError, match="dropout"):
        ModelConfig(kind="gru", n_features=1, n_targets=1, horizon=1, dropout=1.5)


# -- the delta head ---------------------------------------------------------------------------

# Features a, b, c; targets c and a, each with a target scaler of its own. Every mean and std
# is a power of two (or a sum of few), so scaling integers and carrying them between the
# scales is exact in float32: the zero-change test can ask for exact equality.
FEATURES, TARGETS = ["a", "b", "c"], ["c", "a"]
SCALER = ScalerSet(
    features=Scaler(mean=[4.0, 1.0, -2.0], std=[2.0, 0.5, 4.0]),
    targets=Scaler(mean=[2.0, 8.0], std=[8.0, 0.25]),
)


def _delta_model(kind: str, skip: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(
        kind=kind,
        n_features=3,
        n_targets=2,
        horizon=4,
        hidden=5,
        layers=2,
        lags=(1, 2, 4),
        skip=skip,
        head="delta",
        last_value=last_value_map(FEATURES, TARGETS, SCALER),
    )
    return build_model(config).eval()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("skip", [False, True])
def test_delta_head_with_zero_change_is_persistence_exactly(kind: str, skip: bool) -> None:
    model = _delta_model(kind, skip)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    raw = np.random.default_rng(1).integers(-20, 30, (3, 17, 3)).astype(np.float32)
    x = torch.from_numpy(SCALER.features.transform(raw).astype(np.float32))
    with torch.no_grad():
        y = model(x, *model.init_states(3))[0].numpy()
    forecast = SCALER.targets.inverse(y)  # [B, T, horizon, n_targets], original units
    last = raw[..., [FEATURES.index(t) for t in TARGETS]]
    np.testing.assert_array_equal(forecast, np.broadcast_to(last[:, :, None], forecast.shape))


def test_delta_head_adds_the_change_to_the_last_value() -> None:
    model = _delta_model("gru")
    level = build_model(dataclasses.replace(model.config, head="level", last_value=()))
    level.load_state_dict(model.state_dict())  # the same weights: no extra ones in the delta
    x = torch.randn(2, 6, 3)
    with torch.no_grad():
        change = level.eval()(x, *level.init_states(2))[0]
        y = model(x, *model.init_states(2))[0]
    carried = torch.stack([x[..., 2] * 0.5 - 0.5, x[..., 0] * 8.0 - 16.0], dim=-1)
    torch.testing.assert_close(y, change + carried[:, :, None], rtol=0, atol=1e-5)


def test_delta_needs_every_target_among_the_features() -> None:
    with pytest.raises(TrainingConfigError, match="target 'd' is not a feature") as caught:
        last_value_map(FEATURES, ["c", "d"], SCALER)
    assert "\n" not in str(caught.value)
    with pytest.raises(TrainingConfigError, match="needs 2 last-value entries"):
        ModelConfig(kind="gru", n_features=3, n_targets=2, horizon=1, head="delta")
    with pytest.raises(TrainingConfigError, match="unknown head"):
        ModelConfig(kind="gru", n_features=1, n_targets=1, horizon=1, head="ratio")  # type: ignore[arg-type]


def test_delta_config_round_trips() -> None:
    config = _delta_model("tdnn").config
    assert config.last_value == ((2, 0.5, -0.5), (0, 8.0, -16.0))
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert (
        ModelConfig.from_dict({"kind": "gru", "n_features": 1, "n_targets": 1, "horizon": 1}).head
        == "level"
    )
