"""Categorical features as a bounded number of inputs: each (name, value) pair hashed to a bucket.

A category's values are open-ended (a city, a product id, whatever a producer sends), so no model
may grow an input per value: every model that takes categories gets the same ``buckets`` inputs,
and a pair lands in the bucket :func:`category_bucket` gives it. The hash is CRC-32, the same in
every process and every run, so a checkpoint's buckets mean the same after a restart (Python's
``hash`` of a string is salted per process). Two pairs may share a bucket; with a few dozen values
and the default number of buckets that is rare, and it costs accuracy, never correctness.
"""

from __future__ import annotations

import zlib

#: Buckets the models give categorical features unless told otherwise.
DEFAULT_CATEGORY_BUCKETS = 16


def category_bucket(name: str, value: str, buckets: int) -> int:
    """The bucket (``0 <= bucket < buckets``) of the category ``name`` taking ``value``.

    >>> category_bucket("city", "Paris", 16) == category_bucket("city", "Paris", 16)
    True
    >>> 0 <= category_bucket("city", "Lyon", 16) < 16
    True
    """
    # The NUL keeps ("a", "b=c") and ("a=b", "c") apart; surrogatepass: never raise on any str.
    return zlib.crc32(f"{name}\x00{value}".encode("utf-8", "surrogatepass")) % buckets
