"""Secret and repeatable settings: where they come from, and that a secret never shows itself."""

from __future__ import annotations

import argparse
import logging
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_lstm.config import secret as secret_registry
from stream_lstm.config.declared import PRODUCE_SETTINGS, RUN_SETTINGS
from stream_lstm.config.secret import MASK, MIN_REDACTED_LENGTH, Secret, redact
from stream_lstm.config.setting import add_settings, resolve_settings
from stream_lstm.errors import ConfigError
from stream_lstm.telemetry.redaction import RedactingFilter


@pytest.fixture(autouse=True, scope="module")
def _secrets_forgotten_after_the_module() -> object:
    """The property test makes secrets of random text ("0000", say); every later test in the same
    process would find them masked in its messages, so the registry is put back afterwards."""
    known = secret_registry._known
    yield
    secret_registry._known = known


def resolve(argv: list[str], environ: dict[str, str] | None = None, settings=RUN_SETTINGS) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_settings(parser, settings)
    return resolve_settings(parser.parse_args(argv), settings, environ=environ or {})


def test_a_secret_comes_from_the_flag_its_file_the_environment_or_the_toml_file(tmp_path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text("from-a-file\n")
    assert resolve(["--sasl-password", "on-the-line"])["sasl_password"].reveal() == "on-the-line"
    assert resolve(["--sasl-password-file", str(secret_file)])["sasl_password"].reveal() == "from-a-file"
    environ = {"STREAM_LSTM_SASL_PASSWORD_FILE": str(secret_file)}
    assert resolve([], environ)["sasl_password"].reveal() == "from-a-file"
    assert resolve([], {"STREAM_LSTM_SASL_PASSWORD": "in-env"})["sasl_password"].reveal() == "in-env"
    toml = tmp_path / "settings.toml"
    toml.write_text(f'sasl_password_file = "{secret_file}"\n')
    assert resolve(["--config", str(toml)])["sasl_password"].reveal() == "from-a-file"
    assert resolve([])["sasl_password"] is None


def test_a_flag_wins_over_a_secret_file_in_the_environment(tmp_path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text("from-a-file")
    environ = {"STREAM_LSTM_SASL_PASSWORD_FILE": str(secret_file)}
    assert resolve(["--sasl-password", "flag"], environ)["sasl_password"].reveal() == "flag"


def test_a_missing_or_empty_secret_file_is_a_clear_error_without_the_secret(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the secret file .*missing"):
        resolve(["--sasl-password-file", str(tmp_path / "missing")])
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve(["--sasl-password-file", str(tmp_path / "empty")])


def test_a_secret_shows_as_a_mask_in_str_repr_format_and_the_settings() -> None:
    settings = resolve(["--sasl-password", "hunter2-hunter2"])
    secret = settings["sasl_password"]
    shown = [str(secret), repr(secret), f"{secret}", f"{secret!r:>30}", repr(settings)]
    assert all("hunter2" not in text for text in shown)
    assert MASK in str(secret)
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_repeated_settings_come_from_each_flag_lines_of_the_environment_or_a_toml_list(tmp_path) -> None:
    argv = ["--kafka-option", "client.id=a", "--kafka-option", "metadata.max.age.ms=1000"]
    expected = (("client.id", "a"), ("metadata.max.age.ms", "1000"))
    assert resolve(argv)["kafka_option"] == expected
    environ = {"STREAM_LSTM_KAFKA_OPTION": "client.id=a\nmetadata.max.age.ms=1000\n"}
    assert resolve([], environ)["kafka_option"] == expected
    toml = tmp_path / "settings.toml"
    toml.write_text('kafka_option = ["client.id=a", "metadata.max.age.ms=1000"]\n')
    assert resolve(["--config", str(toml)])["kafka_option"] == expected
    assert resolve([])["kafka_option"] == ()


def test_a_secret_looking_option_value_is_a_secret() -> None:
    options = resolve(["--kafka-option", "sasl.oauthbearer.client.secret=s3cr3t-value"])["kafka_option"]
    ((name, value),) = options
    assert name == "sasl.oauthbearer.client.secret" and isinstance(value, Secret)
    assert value.reveal() == "s3cr3t-value" and "s3cr3t" not in repr(options)


def test_produce_takes_the_security_settings_too() -> None:
    settings = resolve(["--security-protocol", "sasl_ssl"], settings=PRODUCE_SETTINGS)
    assert settings["security_protocol"] == "SASL_SSL"


@given(st.text(min_size=MIN_REDACTED_LENGTH, max_size=40).filter(lambda text: text.strip() == text))
def test_redact_masks_every_form_a_library_may_print(value: str) -> None:
    Secret(value)
    forms = [value, repr(value), repr(value.encode()), f"b'\\x00user\\x00{value}'"]
    for form in forms:
        text = f"request {form} sent"
        assert value not in redact(text)


def test_the_log_filter_masks_messages_arguments_and_tracebacks() -> None:
    Secret("correct-horse-battery")
    handler = logging.Handler()
    handler.addFilter(RedactingFilter())
    records = []
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("auth with %r", b"\x00alice\x00correct-horse-battery")
        try:
            raise ValueError("bad value correct-horse-battery")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    texts = [logging.Formatter().format(record) for record in records]
    assert len(texts) == 2 and all("correct-horse" not in text for text in texts)
    assert MASK in texts[0] and MASK in texts[1]
