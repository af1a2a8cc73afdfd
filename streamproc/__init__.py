"""streamproc: Kafka-native, exactly-once stateful stream processing in Python."""

from streamproc import codecs
from streamproc.api.stream import GroupedStream, Stream
from streamproc.api.table import GlobalTable, Table
from streamproc.api.topology import Topology
from streamproc.api.windowed import WindowedStream
from streamproc.errors import (
    CodecError,
    ConfigError,
    ProcessingFailed,
    StreamprocError,
    TopologyError,
)
from streamproc.time import windows

__all__ = [
    "CodecError",
    "ConfigError",
    "GlobalTable",
    "GroupedStream",
    "ProcessingFailed",
    "Stream",
    "StreamprocError",
    "Table",
    "Topology",
    "TopologyError",
    "WindowedStream",
    "codecs",
    "windows",
]
__version__ = "0.1.0"
