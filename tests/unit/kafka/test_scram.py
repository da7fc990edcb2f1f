"""The SCRAM client against RFC 7677's worked example, and server messages that do not check."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_lstm.kafka.scram import MAX_ITERATIONS, ScramError, ScramLogin

# RFC 7677, section 3: user "user", password "pencil".
NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def login(password: str = "pencil") -> ScramLogin:
    return ScramLogin("SCRAM-SHA-256", "user", password, nonce=NONCE)


def test_the_rfc_7677_example() -> None:
    scram = login()
    assert scram.first_message() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    assert scram.final_message(SERVER_FIRST) == CLIENT_FINAL
    scram.check_final(SERVER_FINAL)


def test_a_server_that_does_not_know_the_password_is_found_out() -> None:
    scram = login("not-pencil")
    assert scram.final_message(SERVER_FIRST) != CLIENT_FINAL
    with pytest.raises(ScramError, match="does not know the password"):
        scram.check_final(SERVER_FINAL)


def test_a_user_name_is_escaped() -> None:
    assert ScramLogin("SCRAM-SHA-512", "a=b,c", "x", nonce="n").first_message() == b"n,,n=a=3Db=2Cc,r=n"


@pytest.mark.parametrize(
    ("server_first", "words"),
    [
        (b"r=someone-elses-nonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (b"r=" + NONCE.encode() + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (b"r=" + NONCE.encode() + b"x,s=***,i=4096", "salt"),
        (b"r=" + NONCE.encode() + b"x,s=W22ZaJ0SNY7soEsUEjb6gQ==", "iteration"),
        (
            b"r=" + NONCE.encode() + b"x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=" + str(MAX_ITERATIONS + 1).encode(),
            "at most",
        ),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_a_server_first_message_that_does_not_check_is_refused(server_first: bytes, words: str) -> None:
    with pytest.raises(ScramError, match=words):
        login().final_message(server_first)


def test_a_server_final_error_or_garbage_is_refused() -> None:
    scram = login()
    scram.final_message(SERVER_FIRST)
    with pytest.raises(ScramError, match="invalid-proof"):
        scram.check_final(b"e=invalid-proof")
    with pytest.raises(ScramError, match="no valid signature"):
        scram.check_final(b"v=not base64!")
    with pytest.raises(ScramError, match="does not match"):
        scram.check_final(b"v=" + base64.b64encode(b"x" * 32))


SERVER_FIRSTS = st.one_of(
    st.binary(max_size=120),
    st.builds(
        lambda suffix, salt, iterations: b"r=%s%s,s=%s,i=%d" % (NONCE.encode(), suffix, salt, iterations),
        st.binary(max_size=8),
        st.one_of(st.binary(max_size=12), st.binary(max_size=12).map(base64.b64encode)),
        st.integers(min_value=-5, max_value=5000),
    ),
)


@settings(max_examples=200, deadline=None)
@given(server_first=SERVER_FIRSTS, server_final=st.binary(max_size=120))
def test_random_server_messages_raise_only_scram_errors(server_first: bytes, server_final: bytes) -> None:
    scram = login()
    for step, message in ((scram.final_message, server_first), (scram.check_final, server_final)):
        with contextlib.suppress(ScramError):
            step(message)
