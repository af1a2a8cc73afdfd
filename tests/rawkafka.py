"""A bare producer that writes any bytes a Kafka producer can put on the wire.

confluent-kafka's Python API only takes header names as ``str`` (encoded as UTF-8), so it
cannot write what a hostile or buggy producer in another language can: header names that are
not UTF-8. This drives the librdkafka that ships inside the confluent-kafka wheel through
ctypes, with header names and values as raw bytes. Only for tests of hostile input.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Sequence

import confluent_kafka

_RD_KAFKA_PRODUCER = 0
# rd_kafka_vtype_t (rdkafka.h)
_VTYPE_END, _VTYPE_TOPIC, _VTYPE_PARTITION, _VTYPE_VALUE, _VTYPE_KEY = 0, 1, 3, 4, 5
_VTYPE_MSGFLAGS, _VTYPE_TIMESTAMP, _VTYPE_HEADERS = 7, 8, 10
_MSG_F_COPY = 0x2


def _lib() -> ctypes.CDLL:
    libs = os.path.join(os.path.dirname(os.path.dirname(confluent_kafka.__file__)),
                        "confluent_kafka.libs", "librdkafka*.so*")
    found = sorted(glob.glob(libs))
    lib = ctypes.CDLL(found[0] if found else "librdkafka.so.1")
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_headers_new.restype = ctypes.c_void_p
    lib.rd_kafka_headers_new.argtypes = [ctypes.c_size_t]
    lib.rd_kafka_header_add.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ssize_t,
                                        ctypes.c_char_p, ctypes.c_ssize_t]
    lib.rd_kafka_headers_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_err2str.restype = ctypes.c_char_p
    lib.rd_kafka_outq_len.argtypes = [ctypes.c_void_p]
    return lib


class RawProducer:
    """``produce(topic, value, key, partition, headers=[(b"name", b"value")], timestamp=)``
    with every byte as given; :meth:`flush` raises if anything was not delivered."""

    def __init__(self, bootstrap: str) -> None:
        self._lib = lib = _lib()
        conf = lib.rd_kafka_conf_new()
        err = ctypes.create_string_buffer(512)
        for k, v in (("bootstrap.servers", bootstrap), ("acks", "all"),
                     ("message.max.bytes", "10000000")):
            if lib.rd_kafka_conf_set(conf, k.encode(), v.encode(), err, 512) != 0:
                raise RuntimeError(err.value.decode())
        self._rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, err, 512)
        if not self._rk:
            raise RuntimeError(err.value.decode())

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                partition: int = -1, *, headers: Sequence[tuple[bytes, bytes | None]] = (),
                timestamp: int = 0) -> None:
        lib = self._lib
        hdrs = lib.rd_kafka_headers_new(len(headers) or 1)
        for name, hv in headers:
            lib.rd_kafka_header_add(hdrs, name, len(name), hv, -1 if hv is None else len(hv))
        args: list[object] = [
            ctypes.c_int(_VTYPE_TOPIC), ctypes.c_char_p(topic.encode()),
            ctypes.c_int(_VTYPE_PARTITION), ctypes.c_int32(partition),
            ctypes.c_int(_VTYPE_MSGFLAGS), ctypes.c_int(_MSG_F_COPY),
            ctypes.c_int(_VTYPE_TIMESTAMP), ctypes.c_int64(timestamp),
            ctypes.c_int(_VTYPE_HEADERS), ctypes.c_void_p(hdrs),
        ]
        if value is not None:
            args += [ctypes.c_int(_VTYPE_VALUE), ctypes.c_char_p(value),
                     ctypes.c_size_t(len(value))]
        if key is not None:
            args += [ctypes.c_int(_VTYPE_KEY), ctypes.c_char_p(key), ctypes.c_size_t(len(key))]
        args.append(ctypes.c_int(_VTYPE_END))
        code = lib.rd_kafka_producev(ctypes.c_void_p(self._rk), *args)
        if code != 0:
            lib.rd_kafka_headers_destroy(hdrs)  # only owned by librdkafka on success
            raise RuntimeError(f"produce failed: {lib.rd_kafka_err2str(code).decode()}")

    def flush(self, timeout_s: float = 30) -> None:
        self._lib.rd_kafka_flush(ctypes.c_void_p(self._rk), int(timeout_s * 1000))
        left = self._lib.rd_kafka_outq_len(ctypes.c_void_p(self._rk))
        if left:
            raise RuntimeError(f"{left} raw records not delivered")

    def close(self) -> None:
        if self._rk:
            self.flush()
            self._lib.rd_kafka_destroy(ctypes.c_void_p(self._rk))
            self._rk = None
