"""Kafka's default partitioner for keyed records, in Python: which partition holds a key.

The engine's producers use librdkafka's ``murmur2_random`` partitioner, which is the Java
client's (and Kafka Streams') default for records with a key: ``toPositive(murmur2(key bytes))
% partitions``. Queryable state needs the same function to find the task (and so the instance)
that holds a key, without producing anything. Only per query, never per record, so plain
Python is fast enough.
"""

from __future__ import annotations

_SEED = 0x9747B28C
_M = 0x5BD1E995
_R = 24
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: the 32-bit MurmurHash2 of ``data`` as a signed int, exactly
    as the Java client computes it (little-endian 4-byte blocks, seed 0x9747b28c)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    blocks = length & ~3
    for i in range(0, blocks, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> _R
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[blocks + 2] << 16
    if rest >= 2:
        h ^= data[blocks + 1] << 8
    if rest >= 1:
        h ^= data[blocks]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (and librdkafka's ``murmur2_random``) picks
    for a non-null ``key`` among ``partitions``: ``toPositive(murmur2(key)) % partitions``."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
