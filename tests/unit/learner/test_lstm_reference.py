"""The batched, chunked forward pass equals a plain step-by-step LSTM over each key's history."""

from __future__ import annotations

import dataclasses
import math
import pickle
from typing import Any

import numpy as np
import pytest
import torch

from stream_lstm.learner.fused_lstm import PADDED_CALL_MAX_ROWS
from stream_lstm.learner.legacy_state import learner_from_pickled_state
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.messages.events import Event
from stream_lstm.messages.stream_rate import STREAM_RATE_FEATURE
from stream_lstm.messages.trend_scales import DEFAULT_TREND_SCALES, trend_rates
from stream_lstm.offline.generator import temporal_stream
from tests.old_checkpoints import old_learner_state


def reference_probabilities(learner: LSTMLearner, events: list[Event], batch_size: int) -> np.ndarray:
    """Run each key's whole history one step at a time from a zero state with fixed weights.

    With frozen weights and an unscaled input, truncation changes nothing in the forward pass, so
    this is what every prediction must equal whatever the batch size and window length. The
    trend inputs are each feature's distance from the key's moving averages of it, event by event.
    The stream rate (the moving average of all earlier labels) is a feature from the first batch
    after one that leaves more than one key (``batch_size``: where batches start).
    """
    lstm, head = learner.network.lstm, learner.network.head
    rates = trend_rates(learner.trend_scales).tolist()
    stream_rate, step = 0.5, 1.0 - 0.5 ** (1.0 / learner.stream_rate_half_life)
    keys_seen: set[str] = set()
    keyed = False
    trend_start = learner.max_features + 3 + learner.category_buckets
    averages: dict[tuple[str, int, int], float] = {}
    columns: dict[str, int] = {}
    state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    previous_label: dict[str, int] = {}
    previous_ts: dict[str, float] = {}
    out = []
    for i, event in enumerate(events):
        if i % batch_size == 0:
            keyed = keyed or len(keys_seen) > 1
        keys_seen.add(event.key)
        features = {**event.features, STREAM_RATE_FEATURE: stream_rate} if keyed else event.features
        x = torch.zeros(learner.input_size)
        for name, value in features.items():
            column = columns.setdefault(name, len(columns))
            x[column] = value
            for scale, rate in enumerate(rates):
                average = averages.get((event.key, scale, column), 0.0)
                deviation = value - average
                x[trend_start + scale * learner.max_features + column] = deviation
                averages[event.key, scale, column] = average + rate * deviation
        if event.ts is not None and event.key in previous_ts:
            x[learner.max_features] = math.log1p(max(event.ts - previous_ts[event.key], 0.0))
        if event.key in previous_label:
            x[learner.max_features + 1] = 2.0 * previous_label[event.key] - 1.0
        else:
            x[learner.max_features + 2] = 1.0
        h, c = state.get(event.key, (torch.zeros(1, 1, learner.hidden_size),) * 2)
        with torch.no_grad():
            output, (h, c) = lstm(x.view(1, 1, -1), (h, c))
            out.append(torch.sigmoid(head(output[0, 0])).item())
        state[event.key] = (h, c)
        if event.label is not None:
            previous_label[event.key] = event.label
            stream_rate += step * (event.label - stream_rate)
        if event.ts is not None:
            previous_ts[event.key] = event.ts
    return np.array(out)


@pytest.mark.parametrize(
    ("batch_size", "tbptt_steps", "n_keys"),
    [(1, 1, 1), (1, 4, 3), (7, 3, 1), (32, 4, 5), (64, 8, 40), (200, 5, 2), (16, 1, 4), (64, 8, 1)],
)
def test_chunked_forward_matches_step_by_step(batch_size: int, tbptt_steps: int, n_keys: int) -> None:
    events = list(temporal_stream(400, n_keys=n_keys, seed=11))
    learner = LSTMLearner(  # the network's probabilities, not averaged with the base rate
        hidden_size=8,
        tbptt_steps=tbptt_steps,
        learning_rate=0.0,
        adapt_scaler=False,
        device="cpu",
        base_rate_odds=0,
    )
    expected = reference_probabilities(learner, events, batch_size)
    got = []
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        got.append(learner.predict_batch(batch))
        learner.learn_batch(batch)
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=0, atol=1e-5)


def learn_side_by_side(
    first: LSTMLearner, second: LSTMLearner, events: list[Event], batch_size: int, *, atol: float
) -> None:
    """Stream ``events`` through both learners; every batch's predictions and gradients, and the
    final weights, must agree to ``atol``.

    The learners compared are built without the step size's early boost: its larger first steps
    carry the two paths' float32 rounding differences past ``atol`` over a stream, and it is the
    same optimizer on both sides anyway."""
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        np.testing.assert_allclose(first.predict_batch(batch), second.predict_batch(batch), rtol=0, atol=atol)
        first.learn_batch(batch)
        second.learn_batch(batch)
        for mine, theirs in zip(first.network.parameters(), second.network.parameters(), strict=True):
            np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=0, atol=atol)
    for mine, theirs in zip(first.network.parameters(), second.network.parameters(), strict=True):
        np.testing.assert_allclose(mine.detach().numpy(), theirs.detach().numpy(), rtol=0, atol=1e-5)


class PathCounter:
    """Counts which of the learner's forward paths ran: the steady state with keys repeating in a
    batch, chunks after the first (boundary states), LSTM runs over sequences of several lengths,
    and those that took a fused call per length."""

    def __init__(self, learner: LSTMLearner) -> None:
        self.steady_with_repeats = self.boundaries = self.mixed_lengths = self.per_length = 0
        full_windows, boundary_states, run_lstm = (
            learner._forward_full_windows,
            learner._boundary_states,
            learner._run_lstm,
        )
        lstm_call = learner._lstm_call
        calls = 0

        def counting_full_windows(batch: list[Event], *args: Any) -> Any:
            self.steady_with_repeats += len({e.key for e in batch}) < len(batch)
            return full_windows(batch, *args)

        def counting_boundaries(*args: Any) -> Any:
            self.boundaries += 1
            return boundary_states(*args)

        def counting_calls(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            return lstm_call(*args)

        def counting_runs(inputs: torch.Tensor, lengths: np.ndarray, *args: Any) -> Any:
            nonlocal calls
            self.mixed_lengths += len(np.unique(lengths)) > 1
            calls = 0
            outputs = run_lstm(inputs, lengths, *args)
            self.per_length += calls > 1
            return outputs

        learner._forward_full_windows = counting_full_windows  # type: ignore[method-assign]
        learner._boundary_states = counting_boundaries  # type: ignore[method-assign]
        learner._lstm_call = counting_calls  # type: ignore[method-assign]
        learner._run_lstm = counting_runs  # type: ignore[method-assign]


@pytest.mark.parametrize(("batch_size", "n_keys"), [(64, 40), (48, 24), (16, 30)])
def test_steady_state_path_learns_exactly_like_the_general_chunked_path(batch_size: int, n_keys: int) -> None:
    """Once keys have full windows, batches take a shortcut (keys with up to ``tbptt_steps`` new
    events each); with learning on, it must give the same predictions, gradients and weights as the
    general path, which the test above pins to a plain LSTM."""
    events = list(temporal_stream(1500, n_keys=n_keys, seed=5))
    fast = LSTMLearner(hidden_size=8, tbptt_steps=4, device="cpu", lr_boost_half_life=0, extra_step_events=0)
    general = LSTMLearner(
        hidden_size=8, tbptt_steps=4, device="cpu", lr_boost_half_life=0, extra_step_events=0
    )
    general._full_window_path = False
    paths = PathCounter(fast)
    learn_side_by_side(fast, general, events, batch_size, atol=1e-5)
    assert paths.steady_with_repeats >= 3  # the short path ran on batches where keys repeat


def _run_lstm_grouped_by_length(learner: LSTMLearner):  # type: ignore[no-untyped-def]
    """The learner's ``_run_lstm`` as one fused call per distinct length, with no padding: the
    plain way, to which the learner's one padded call must be equal."""

    def run(
        inputs: torch.Tensor,
        lengths: np.ndarray,
        state: tuple[torch.Tensor, torch.Tensor],
        weights: list[torch.Tensor],
    ) -> torch.Tensor:
        h, c = state
        outputs = inputs.new_zeros(inputs.shape[0], inputs.shape[1], learner.hidden_size)
        for length in np.unique(lengths).tolist():
            rows = torch.as_tensor(np.flatnonzero(lengths == length))
            out, _, _ = learner._lstm_call(inputs[rows, :length], h[rows], c[rows], weights)
            outputs = outputs.index_copy(
                0, rows, torch.nn.functional.pad(out, (0, 0, 0, inputs.shape[1] - length))
            )
        return outputs

    return run


@pytest.mark.parametrize(
    ("batch_size", "n_keys", "tbptt_steps", "least_mixed"),
    [
        (64, 40, 8, 3),
        (16, 100, 3, 3),
        (50, 200, 5, 3),
        (64, 2, 5, 1),  # many events per key: chunks after the first, from boundary states
        (1500, 5000, 6, 1),  # many rows of new keys: a call per length (see _run_lstm)
    ],
)
def test_one_padded_lstm_call_learns_like_a_call_per_sequence_length(
    batch_size: int, n_keys: int, tbptt_steps: int, least_mixed: int
) -> None:
    """While windows fill up, a batch's sequences have many lengths; running them as one padded
    call must give the predictions, gradients and weights of a call per length."""
    events = list(temporal_stream(1200, n_keys=n_keys, seed=9))
    padded = LSTMLearner(
        hidden_size=8, tbptt_steps=tbptt_steps, device="cpu", lr_boost_half_life=0, extra_step_events=0
    )
    grouped = LSTMLearner(
        hidden_size=8, tbptt_steps=tbptt_steps, device="cpu", lr_boost_half_life=0, extra_step_events=0
    )
    grouped._run_lstm = _run_lstm_grouped_by_length(grouped)  # type: ignore[method-assign]
    paths = PathCounter(padded)
    learn_side_by_side(padded, grouped, events, batch_size, atol=1e-6)
    assert paths.mixed_lengths >= least_mixed  # calls over sequences of different lengths
    assert (paths.per_length > 0) == (batch_size > PADDED_CALL_MAX_ROWS)  # the path meant here ran


def stream_with_gaps(n_keys: int) -> list[Event]:
    """The generated stream with every 7th label missing and a fourth feature from the middle on."""
    events = []
    for i, event in enumerate(temporal_stream(1200, n_keys=n_keys, seed=3)):
        features = {**event.features, "late": event.features["a"] * 0.5} if i >= 600 else event.features
        label = None if i % 7 == 3 else event.label
        events.append(dataclasses.replace(event, features=features, label=label))
    return events


def all_columns(learner: LSTMLearner) -> LSTMLearner:
    """``learner``, made to run the LSTM on all its input columns."""
    learner._input_columns = lambda used: None  # type: ignore[method-assign]
    return learner


@pytest.mark.parametrize(
    ("batch_size", "n_keys", "tbptt_steps", "path"),
    [
        (64, 40, 4, "steady_with_repeats"),
        (16, 3, 5, "boundaries"),
        (600, 5000, 6, "per_length"),  # more rows than PADDED_CALL_MAX_ROWS, lengths mixed
    ],
)
def test_the_lstm_on_the_named_input_columns_learns_like_the_lstm_on_all_of_them(
    batch_size: int, n_keys: int, tbptt_steps: int, path: str
) -> None:
    """On the CPU the LSTM runs only on the input columns that can hold a value (features with a
    name, the time gap, the previous label): the others are 0 everywhere, so the predictions,
    gradients and weights must be those of the LSTM on all columns, on each path, with labels
    missing and a feature appearing mid-stream."""
    events = stream_with_gaps(n_keys)
    narrow = LSTMLearner(
        hidden_size=8, tbptt_steps=tbptt_steps, device="cpu", lr_boost_half_life=0, extra_step_events=0
    )
    full = all_columns(
        LSTMLearner(
            hidden_size=8, tbptt_steps=tbptt_steps, device="cpu", lr_boost_half_life=0, extra_step_events=0
        )
    )
    widths = []
    input_columns = narrow._input_columns

    def recording(used: np.ndarray) -> torch.Tensor | None:
        columns = input_columns(used)
        widths.append(narrow.input_size if columns is None else columns.numel())
        return columns

    narrow._input_columns = recording  # type: ignore[method-assign]
    paths = PathCounter(narrow)
    # Float32 sums over other numbers of columns round differently, and learning carries it on.
    learn_side_by_side(narrow, full, events, batch_size, atol=1e-5)
    # 3 features, then 4 and the stream rate (in either order), + the time gap and the 2 label
    # inputs + the trend inputs of each feature.
    first, last = 6 + DEFAULT_TREND_SCALES * 3, 8 + DEFAULT_TREND_SCALES * 5
    assert {first, last} <= set(widths) <= {first, 7 + DEFAULT_TREND_SCALES * 4, last}
    assert getattr(paths, path) > 0  # the path meant here ran
    # Why nothing changes: the columns nobody named kept their initial weights in both learners.
    unnamed = sorted(set(range(narrow.max_features)) - set(narrow.feature_columns.values()))
    initial = LSTMLearner(
        hidden_size=8, tbptt_steps=tbptt_steps, device="cpu", lr_boost_half_life=0, extra_step_events=0
    ).network.lstm.weight_ih_l0
    for learner in (narrow, full):
        weight = learner.network.lstm.weight_ih_l0.detach()
        torch.testing.assert_close(weight[:, unnamed], initial.detach()[:, unnamed], rtol=0, atol=0)


@pytest.mark.parametrize("with_layout", [True, False])
def test_imported_key_states_continue_alike_on_the_named_columns_and_on_all(with_layout: bool) -> None:
    """Key states from another learner continue the same on the named columns as on all of them.
    Here the exporter's windows hold a feature, "x", that the importer never meets. States without
    their feature layout (as older versions wrote them) leave its column without a name: the
    importer then keeps every column, also after a reload, or it would drop those values."""
    events = [
        dataclasses.replace(e, features={**e.features, "x": 1.0 + e.features["a"]}) if i < 600 else e
        for i, e in enumerate(temporal_stream(1200, n_keys=30, seed=3))
    ]
    exporter = LSTMLearner(
        hidden_size=8, tbptt_steps=4, device="cpu", lr_boost_half_life=0, extra_step_events=0
    )
    for start in range(0, 600, 50):
        exporter.predict_batch(events[start : start + 50])
        exporter.learn_batch(events[start : start + 50])
    state = exporter.export_keys(list(exporter.tracked_keys()))
    if not with_layout:
        del state["feature_columns"]
    narrow = LSTMLearner(
        hidden_size=8, tbptt_steps=4, device="cpu", lr_boost_half_life=0, extra_step_events=0
    )
    full = all_columns(
        LSTMLearner(hidden_size=8, tbptt_steps=4, device="cpu", lr_boost_half_life=0, extra_step_events=0)
    )
    for learner in (narrow, full):
        learner.network.load_state_dict(exporter.network.state_dict())
        learner.import_keys(state)
    used = np.array([0, 1, 2, narrow.max_features])
    assert (narrow._input_columns(used) is None) == (not with_layout)
    learn_side_by_side(narrow, full, events[600:], 50, atol=1e-6)
    assert (pickle.loads(pickle.dumps(narrow))._input_columns(used) is None) == (not with_layout)


def test_a_checkpoint_without_the_narrowing_flag_decides_it_from_its_windows() -> None:
    """Learners pickled before the flag existed may hold windows with values in columns they have
    no name for (imported without a layout): converted, they keep every column then, and only
    then."""
    learner = LSTMLearner(hidden_size=8, tbptt_steps=4, device="cpu")
    events = list(temporal_stream(200, n_keys=10, seed=3))
    learner.predict_batch(events)
    learner.learn_batch(events)
    used = np.array([0, 1, 2, learner.max_features])
    for unnamed_value, narrows in ((0.0, True), (2.5, False)):
        learner.keys.window[0, 0, learner.max_features - 1] = unnamed_value  # a column without a name
        state = old_learner_state(learner)
        del state["narrow_inputs"]
        reloaded = learner_from_pickled_state(state)
        assert (reloaded._input_columns(used) is not None) == narrows


def test_an_empty_import_from_a_learner_of_other_sizes_changes_nothing() -> None:
    other = LSTMLearner(hidden_size=8, max_features=16, device="cpu")
    learner = LSTMLearner(hidden_size=8, device="cpu")
    learner.import_keys(other.export_keys([]))
    assert learner._input_columns(np.array([0, 1, 2, learner.max_features])) is not None
