"""The settings a resumed checkpoint must share with the service, and those it may change.

An instance checkpoint holds the settings its models were built with
(:meth:`~stream_lstm.evaluation.prequential.PrequentialEvaluator.learner_settings`). When the
service resumes one, its own or another instance's (a warm start), with other settings, the
checkpoint's would silently win: the service would run other models, sizes and steps than it was
told to. So every difference is either refused or applied:

* **refused** (:data:`FIXED`): the models, the rolling window, ``max_keys``, the LSTM's sizes
  (``category_buckets`` and ``trend_scales`` among them), its inputs (``stream_rate_half_life``)
  and seed. They shape the state itself (weights, key states, score windows) or what it means,
  or, for the seed, only the initial weights, which a resumed learner no longer has: a new value
  cannot take effect.
* **added or dropped**: the baselines (``logreg``, ``logreg_lags``, ``no_change``) and the mixture
  (``mix``) may be added to or dropped from the models, as long as the LSTM is in both or in
  neither: an added baseline starts fresh (its scores too), and the mixture starts again with
  equal weights whenever the models it mixes change (a checkpoint written before a model existed
  resumes under the new default models).
* **kept, with a warning**: a checkpoint whose learner has no category inputs (``category_buckets``
  0: every checkpoint written before categorical features) resumes under any ``category_buckets``,
  so that an upgraded service resumes with its default settings; it learns nothing from categories.
  Likewise a checkpoint without trend inputs (``trend_scales`` 0) resumes under any
  ``trend_scales``, without them, and one without the stream rate (``stream_rate_half_life`` 0)
  under any half-life, without it.
* **applied** (:data:`RESUME_SAFE`): ``learning_rate``, ``lr_boost_half_life``, ``clip_grad_norm``,
  ``steps_per_batch``, ``extra_step_events``, ``base_rate_odds`` and ``device`` change how the
  learner goes on, not what it has learned, so they are applied to the loaded learner and logged.

``torch_threads``, ``batch_size`` and the checkpoint and Kafka settings are the service's, not the
learner's: a checkpoint does not hold them, and they may change freely.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stream_lstm.errors import ConfigError
from stream_lstm.evaluation.mixture import MIXTURE, FixedShareMixture
from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.learner.limits import CHANGEABLE_SETTINGS
from stream_lstm.models.build import SHARED_WITH_LAGS, TRAINED, build_models
from stream_lstm.models.protocols import trained_model

log = logging.getLogger(__name__)

#: Settings that must be the checkpoint's (see the module doc).
FIXED = (
    "models",
    "window",
    "max_keys",
    "hidden_size",
    "tbptt_steps",
    "max_features",
    "category_buckets",
    "trend_scales",
    "stream_rate_half_life",
    "input_clip",
    "seed",
)
#: Settings that may differ from the checkpoint's: applied to the loaded learner.
RESUME_SAFE = CHANGEABLE_SETTINGS


def current_learner_settings(settings: Mapping[str, Any], lstm: Mapping[str, Any]) -> dict[str, Any]:
    """The learner settings of resolved ``stream-lstm run`` settings, as a checkpoint holds them
    (``lstm``: the LSTM's keyword arguments)."""
    return {
        "models": list(settings["models"]),
        "window": settings["window"],
        "max_keys": settings["max_keys"],
        **lstm,
    }


def _mixture_last(names: Any) -> list[str]:
    return [name for name in names if name != MIXTURE] + [name for name in names if name == MIXTURE]


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def settings_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The settings, of :data:`FIXED` and :data:`RESUME_SAFE`, that both hold with different values:
    name -> (checkpoint's, current)."""
    differences = {}
    for name in (*FIXED, *RESUME_SAFE):
        if name in saved and name in current:
            before, now = saved[name], current[name]
            if name == "models":  # the mixture is scored after the models, wherever it is named
                before, now = _mixture_last(before), _mixture_last(now)
            if before != now:
                differences[name] = (before, now)
    return differences


def _same_trained_model(saved: Any, now: Any) -> bool:
    """Whether two ``--models`` lists run the same trained model (the LSTM or none): then the
    rest, baselines and the mixture, may differ."""
    return [name for name in saved if name in TRAINED] == [name for name in now if name in TRAINED]


def _follow_models(
    evaluator: PrequentialEvaluator,
    now: Any,
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    source: str,
) -> None:
    """Add or drop baselines and the mixture as ``now`` names them (the trained model is the
    checkpoint's): an added baseline starts fresh, built with the checkpoint's shared settings
    (``saved``: those of its models; ``current``'s where none of them has one), and the mixture
    starts again with equal weights whenever the models it mixes change. The same models in
    another order keep the checkpoint's order."""
    wanted = [name for name in now if name != MIXTURE]
    have = list(evaluator.models)
    added = [name for name in wanted if name not in have]
    dropped = [name for name in have if name not in wanted]
    if added or dropped:
        shared = {name: saved.get(name, current.get(name)) for name in SHARED_WITH_LAGS}
        shared = {name: value for name, value in shared.items() if value is not None}
        built = build_models(added, max_keys=saved["max_keys"], lstm=shared) if added else {}
        evaluator.change_models(wanted, built)
        if added:
            log.info("%s has no %s: started fresh", source, ", ".join(added))
        if dropped:
            log.info("%s: %s dropped, as not among the models", source, ", ".join(dropped))
    if MIXTURE in now and evaluator.mixture is None:
        log.info("%s: %s starts with equal weights", source, MIXTURE)
        evaluator.set_mixture(FixedShareMixture(list(evaluator.models)))
    elif MIXTURE not in now and evaluator.mixture is not None:
        log.info("%s: its mixture is dropped, as %s is not among the models", source, MIXTURE)
        evaluator.set_mixture(None)


#: Inputs that later versions added, by the setting of their number: a checkpoint without them
#: (0, as every checkpoint written before them) resumes as it is under any number, with a
#: warning; refusing it would stop every upgraded service that resumes with the default settings.
ADDED_LATER = {
    "category_buckets": "category inputs",
    "trend_scales": "trend inputs",
    "stream_rate_half_life": "stream rate inputs",
}


def _keep_inputs_added_later(differences: dict[str, tuple[Any, Any]], source: str) -> None:
    """Take out of ``differences`` the :data:`ADDED_LATER` inputs that the checkpoint lacks."""
    for name, inputs in ADDED_LATER.items():
        kept = differences.get(name)
        if kept is not None and kept[0] == 0:
            del differences[name]
            log.warning(
                "%s has no %s (%s 0, now %s): it is resumed as it is, without them; start a new "
                "checkpoint store to learn from them",
                source,
                inputs,
                name,
                kept[1],
            )


def resume_with_settings(
    evaluator: PrequentialEvaluator, current: Mapping[str, Any], source: str
) -> PrequentialEvaluator:
    """``evaluator``, loaded from ``source`` (e.g. "the checkpoint of instance a in directory d"),
    with the models of ``current`` (see :func:`_follow_models`) and its :data:`RESUME_SAFE`
    settings applied; :class:`ConfigError` listing every difference if any :data:`FIXED` setting
    differs (compared with the checkpoint as written, before anything changes)."""
    saved = evaluator.learner_settings()
    differences = settings_differences(saved, current)
    models = differences.pop("models", None)
    if models is not None and not _same_trained_model(*models):
        differences["models"] = models
    _keep_inputs_added_later(differences, source)
    refused = {name: values for name, values in differences.items() if name in FIXED}
    if refused:
        listed = "; ".join(
            f"{name}: checkpoint {_shown(before)}, now {_shown(now)}"
            for name, (before, now) in refused.items()
        )
        raise ConfigError(
            f"{source} was written with other settings ({listed}). These cannot change on a resumed "
            "learner: run with the checkpoint's settings, or start a new learner with a new "
            "checkpoint store (another --checkpoint-dir or --checkpoint-topic) and a new --group-id"
        )
    if models is not None:
        _follow_models(evaluator, models[1], saved, current, source)
    changes = {name: now for name, (_, now) in differences.items()}
    if changes:
        trained = trained_model(evaluator.models)
        if trained is not None:
            trained.change_settings(changes)
        for name, (before, now) in differences.items():
            log.info("%s: %s was %s in the checkpoint, now %s", source, name, _shown(before), _shown(now))
    return evaluator
