"""River's own estimator checks (``river.checks``) on :class:`LSTMClassifier`, every one the
installed river yields for it, for each of its test configurations."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from river import checks

from stream_lstm import LSTMClassifier

CONFIGURATIONS = list(LSTMClassifier._unit_test_params())


def _cases() -> list[object]:
    cases = []
    for number, params in enumerate(CONFIGURATIONS):
        seen: dict[str, int] = {}
        for check in checks.yield_checks(LSTMClassifier(**params)):
            name = check.__name__
            seen[name] = seen.get(name, 0) + 1  # a check runs once per dataset river gives it
            cases.append(pytest.param(params, check, id=f"config{number}-{name}-{seen[name]}"))
    return cases


@pytest.mark.slow
@pytest.mark.parametrize(("params", "check"), _cases())
def test_river_check(params: dict[str, object], check: Callable[[LSTMClassifier], None]) -> None:
    model = LSTMClassifier(**params)
    if check.__name__ in model._unit_test_skips():
        pytest.skip(f"{check.__name__}: see LSTMClassifier._unit_test_skips for why")
    check(model.clone())


def test_the_checks_cover_the_mini_batch_and_binary_ones() -> None:
    """The checks that make it a mini-batch binary classifier are among those yielded (river
    yields them only for a class it takes for one, and only where pandas is installed). The seed
    defaults to 0, not None, so river takes the model for deterministic and runs no seeding check."""
    names = {check.__name__ for check in checks.yield_checks(LSTMClassifier(**CONFIGURATIONS[0]))}
    assert {
        "check_predict_proba_many_matches_predict_proba_one",
        "check_predict_many_matches_predict_one",
        "check_predict_proba_one_binary",
        "check_pickling",
    } <= names


def test_only_the_check_explained_is_skipped() -> None:
    assert LSTMClassifier(**CONFIGURATIONS[0])._unit_test_skips() == {"check_learn_many_matches_learn_one"}
