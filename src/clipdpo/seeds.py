"""Sampling seeds as hashes of what a sample is (the run's seed, the item, the sample's number), shared by
both engines and every stage: two different samples never start from the same random stream, however the
items are chunked, ordered or resumed."""

from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from the parts: reruns and resumed shards sample the same way."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_seed(request_seed: int, k: int) -> int:
    """The seed of sample `k` of a request seeded `request_seed`. Not request_seed + k (what vLLM does for
    a request with n > 1): then sample 1 of one item would be sample 0 of the item seeded one higher."""
    return stable_seed(request_seed, "sample", k)
