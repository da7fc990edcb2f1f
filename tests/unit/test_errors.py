"""Every error the package raises on purpose derives from one root and is exported from stream_lstm.errors."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import stream_lstm
from stream_lstm import errors


def declared_errors() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of the package, by name."""
    found = {}
    for module_info in pkgutil.walk_packages(stream_lstm.__path__, "stream_lstm."):
        if module_info.name.endswith("__main__"):
            continue  # importing it runs the command line
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            is_error = inspect.isclass(value) and issubclass(value, BaseException)
            # A private exception (``_Found``) is a module's own control flow, never raised out of it.
            if is_error and value.__module__ == module.__name__ and not name.startswith("_"):
                found[name] = value
    return found


def test_every_error_derives_from_the_root_and_is_exported_from_errors() -> None:
    declared = declared_errors()
    assert {"KafkaIOError", "LearnerProcessError", "BrokerError", "EventError"} <= set(declared)
    for name, error in declared.items():
        assert issubclass(error, errors.StreamLSTMError), name
        assert name in errors.__all__, name
        assert getattr(errors, name) is error, name


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        errors.NoSuchError  # noqa: B018
    except AttributeError as error:
        assert "NoSuchError" in str(error)
    else:
        raise AssertionError("stream_lstm.errors.NoSuchError resolved")
