"""The logistic regressions' clip of standardised inputs: every value within the bound, a NaN as 0,
wherever it stands among the values."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from stream_lstm.models.baselines import LogisticRegressionBaseline

CLIP = 10.0


def clipped_one_by_one(scaled: dict[str, float]) -> dict[str, float]:
    """The clip value by value: the plain way, which the model's faster check must agree with."""
    return {name: 0.0 if math.isnan(v) else min(max(v, -CLIP), CLIP) for name, v in scaled.items()}


values = st.one_of(
    st.floats(min_value=-CLIP, max_value=CLIP),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, CLIP, -CLIP, 0.0]),
)


@given(st.dictionaries(st.text(max_size=3), values, max_size=8))
def test_every_value_is_clipped_and_a_nan_anywhere_becomes_0(scaled: dict[str, float]) -> None:
    model = LogisticRegressionBaseline(input_clip=CLIP)
    got = model._clip(dict(scaled))
    assert got == clipped_one_by_one(scaled)
    assert all(not math.isnan(v) and -CLIP <= v <= CLIP for v in got.values())


def test_values_within_the_bound_come_back_as_they_are() -> None:
    model = LogisticRegressionBaseline(input_clip=CLIP)
    scaled = {"a": -CLIP, "b": 0.5, "c": CLIP}
    assert model._clip(scaled) is scaled
    empty: dict[str, float] = {}
    assert model._clip(empty) is empty


def test_a_nan_after_the_first_value_is_found() -> None:
    """min and max skip a NaN that does not come first: the check must not."""
    model = LogisticRegressionBaseline(input_clip=CLIP)
    assert model._clip({"a": 1.0, "b": math.nan, "c": 2.0}) == {"a": 1.0, "b": 0.0, "c": 2.0}
