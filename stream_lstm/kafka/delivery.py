"""From failed deliveries to the error the service acts on, and the search for the records at fault.

Both clients classify what the producer or the broker refused with these helpers:
:func:`rejected_record` and :func:`delivery_failure` build the
:class:`~stream_lstm.kafka.interface.RejectedRecord` and the
:class:`~stream_lstm.kafka.interface.DeliveryFailed` (or ``RecordsRejected``) that the service
sees. A broker can refuse a whole batch, or a whole transaction, for one bad record:
:func:`isolate_rejected` finds the records it refuses on their own by sending ever smaller groups
again, and :func:`isolate_in_trial_transactions` does so in exactly-once mode, each try in a
transaction of its own that is then aborted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from stream_lstm.kafka.interface import (
    DETAIL_CHARS,
    DeliveryFailed,
    RecordsRejected,
    RejectedRecord,
    Source,
)

log = logging.getLogger(__name__)


def rejected_record(topic: str, source: Source | None, code: str, error: object) -> RejectedRecord:
    """A :class:`RejectedRecord` whose detail is ``error``'s text, cut to :data:`DETAIL_CHARS`."""
    detail = str(error)
    if len(detail) > DETAIL_CHARS:
        detail = detail[: DETAIL_CHARS - 3] + "..."
    return RejectedRecord(topic, source, code, detail)


def delivery_failure(
    rejected: Sequence[RejectedRecord], others: Sequence[str], *, what: str = "records were not delivered"
) -> DeliveryFailed:
    """The error for failed deliveries: :class:`RecordsRejected` when every one was refused for
    good (``others``, the texts of the remaining failures, is empty), else :class:`DeliveryFailed`
    carrying the refused ones. There must be a failure to report: with none, everything was
    delivered, and the caller must not raise at all."""
    if not rejected and not others:
        raise ValueError("delivery_failure needs a failure: none means everything was delivered")
    if not others:
        first = rejected[0]
        return RecordsRejected(
            f"{len(rejected)} {what}, refused for good: {first.code} ({first.detail})", rejected=rejected
        )
    message = f"{len(rejected) + len(others)} {what}: {others[0]}"
    if rejected:
        message += f" ({len(rejected)} of them refused for good: {rejected[0].code})"
    return DeliveryFailed(message, rejected=rejected)


_Record = TypeVar("_Record")

#: What a sender of records returns for each one refused for good: (its index in the group
#: sent, the :class:`RejectedRecord` code, the library's error text).
Refusal = tuple[int, str, str]


def isolate_rejected(
    records: Sequence[_Record],
    send: Callable[[Sequence[_Record]], Sequence[Refusal]],
    found: list[Refusal] | None = None,
) -> list[Refusal]:
    """Of records a broker refused together, the ones it refuses on their own (indexes into ``records``).

    A broker can refuse a whole batch for one bad record (librdkafka does not split a batch the
    broker found too large; a failed transaction fails the batches sent with it), and the
    others are innocent. ``send`` sends a group again, waits, and returns the refusals among
    it, raising on any other failure. A group refused together is halved until each refused
    record was refused while nothing else of its batch was: ``k`` bad records among ``n``
    cost about ``1 + 2 k log2(n)`` sends. Each culprit is appended to ``found`` (returned) as
    soon as it is known, so when ``send`` raises (out of time, say) the caller's ``found`` still
    holds the culprits found so far: report them, and the next try has fewer suspects.

    >>> sent = []
    >>> def send(group):  # a broker that refuses any batch holding a record over 9
    ...     sent.append(len(group))
    ...     return [(i, "record_too_large", "too big") for i in range(len(group))] if max(group) > 9 else []
    >>> isolate_rejected([1, 2, 30, 4, 5, 6], send), sent
    ([(2, 'record_too_large', 'too big')], [6, 3, 1, 2, 1, 1, 3])
    """

    culprits: list[Refusal] = [] if found is None else found

    def search(indexes: list[int]) -> None:
        refused = send([records[i] for i in indexes])
        if len(refused) <= 1:  # refused while nothing else of its batch was: its own fault
            culprits.extend((indexes[j], code, detail) for j, code, detail in refused)
            return
        failed = [indexes[j] for j, _, _ in refused]
        middle = len(failed) // 2
        search(failed[:middle])
        search(failed[middle:])

    search(list(range(len(records))))
    return culprits


#: An output record as the clients keep it to send again: (topic, key, value, source).
HeldRecord = tuple[str, bytes | None, bytes, Source | None]


def rejected_records(records: Sequence[HeldRecord], found: Sequence[Refusal]) -> list[RejectedRecord]:
    """The :class:`RejectedRecord` of each refusal ``found`` among ``records``."""
    return [rejected_record(records[i][0], records[i][3], code, detail) for i, code, detail in found]


def isolate_in_trial_transactions(
    suspects: Sequence[HeldRecord],
    *,
    abort: Callable[[], None],
    probe: Callable[[Sequence[HeldRecord], float], Sequence[Refusal]],
    deadline: float,
    errors: tuple[type[BaseException], ...],
) -> DeliveryFailed | None:
    """Exactly-once: which of a failed transaction's ``suspects`` the broker refuses on their own.

    ``abort`` ends the failed transaction; ``probe(group, deadline)`` sends a group in a trial
    transaction of its own, aborted (invisible to read_committed readers), and returns the
    refusals among it, by the ``deadline`` (the caller's clock). ``errors`` are the library's
    exceptions that end the search (out of time, a broken transaction): the culprits found by
    then are still reported, so the next try has fewer suspects. ``None`` when none was found
    (the caller's own error stands).
    """
    found: list[Refusal] = []
    try:
        abort()
        isolate_rejected(suspects, lambda group: probe(group, deadline), found)
    except errors as error:
        log.warning("cannot tell which of %d refused records are at fault: %s", len(suspects), error)
        return delivery_failure(rejected_records(suspects, found), [str(error)]) if found else None
    return delivery_failure(rejected_records(suspects, found), []) if found else None


def transaction_failure(
    refused: Sequence[tuple[HeldRecord, str, str]],
    others: Sequence[str],
    *,
    abort: Callable[[], None],
    probe: Callable[[Sequence[HeldRecord], float], Sequence[Refusal]],
    deadline: float,
    errors: tuple[type[BaseException], ...],
) -> DeliveryFailed | None:
    """Exactly-once: why a transaction failed, when held records were refused for good; else ``None``.

    ``refused`` holds each held record the broker refused in the failed transaction, with the
    :class:`RejectedRecord` code and the library's text of its refusal; ``others`` the texts of
    the failures that were no record's fault (those of records aborted with the transaction left
    out). One refused record alone is at fault. Several are only suspects (the broker refuses
    whole batches, and a failed transaction fails the batches sent with it): they are tried in
    transactions of their own (see :func:`isolate_in_trial_transactions`, which ``abort``,
    ``probe``, ``deadline`` and ``errors`` are for). ``None`` when no record was refused, or
    something else failed as well: the broker or the network, to roll back and try again.
    """
    if len(refused) == 1:  # nothing else was refused: its own fault
        (topic, _, _, source), code, detail = refused[0]
        return delivery_failure([rejected_record(topic, source, code, detail)], others)
    if not refused or others:
        return None
    suspects = [record for record, _, _ in refused]
    return isolate_in_trial_transactions(suspects, abort=abort, probe=probe, deadline=deadline, errors=errors)
