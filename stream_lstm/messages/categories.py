"""Categorical features as a bounded number of inputs: each (name, value) pair hashed to two buckets.

A category's values are open-ended (a city, a product id, whatever a producer sends), so no model
may grow an input per value: every model that takes categories gets the same ``buckets`` inputs,
and a pair adds 1 to each of the two buckets :func:`category_probes` gives it. With one bucket
per pair, two values sharing it are one value to the models, and that is common (5 values in 16
buckets share one half of the time); with two, values that share one bucket still differ in the
other, and a linear read-out tells them apart unless both collide (about 1 in ``buckets**2 / 2``
per pair). The hash is CRC-32, the same in every process and every run, so a checkpoint's buckets
mean the same after a restart (Python's ``hash`` of a string is salted per process).
"""

from __future__ import annotations

import zlib

#: Buckets the models give categorical features unless told otherwise.
DEFAULT_CATEGORY_BUCKETS = 16


def category_probes(name: str, value: str, buckets: int) -> tuple[int, ...]:
    """The buckets (``0 <= bucket < buckets``, two distinct ones, or the one when ``buckets`` is 1)
    of the category ``name`` taking ``value``.

    >>> category_probes("city", "Paris", 16) == category_probes("city", "Paris", 16)
    True
    >>> first, second = category_probes("city", "Lyon", 16)
    >>> 0 <= first < 16 and 0 <= second < 16 and first != second
    True
    >>> category_probes("city", "Lyon", 1)
    (0,)
    """
    # The NUL keeps ("a", "b=c") and ("a=b", "c") apart; surrogatepass: never raise on any str.
    digest = zlib.crc32(f"{name}\x00{value}".encode("utf-8", "surrogatepass"))
    first = digest % buckets
    if buckets == 1:
        return (first,)
    second = (digest // buckets) % (buckets - 1)
    return first, second + (second >= first)
