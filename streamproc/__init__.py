"""streamproc: Kafka-native, exactly-once stateful stream processing in Python."""

from streamproc import codecs
from streamproc.api.stream import GroupedStream, Stream
from streamproc.api.topology import Topology
from streamproc.errors import (
    CodecError,
    ConfigError,
    ProcessingFailed,
    StreamprocError,
    TopologyError,
)

__all__ = [
    "CodecError",
    "ConfigError",
    "GroupedStream",
    "ProcessingFailed",
    "Stream",
    "StreamprocError",
    "Topology",
    "TopologyError",
    "codecs",
]
__version__ = "0.1.0"
