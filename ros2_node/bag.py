"""ROS 2 bags in and out: single-file MCAP written with `mcap`, read from MCAP or a rosbag2 folder.

Written files use the ``ros2`` profile (``ros2msg`` schemas, ``cdr`` messages), which is what
``ros2 bag record -s mcap`` produces inside its folder: Foxglove and RViz open them directly, and
``ros2 bag play`` plays them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple

from fuller.errors import UserInputError

from .types import msgdef, serialize


class BagError(UserInputError):
    """A bag that cannot be read; the message names the path and the problem."""


class BagMessage(NamedTuple):
    topic: str
    typename: str
    data: bytes  # CDR, as recorded
    log_time_ns: int


class BagWriter:
    """``with BagWriter(path) as bag: bag.write(topic, typename, msg_or_cdr_bytes, log_time_ns)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, tuple[int, str]] = {}
        self._sequence = 0

    def __enter__(self) -> "BagWriter":
        from mcap.writer import CompressionType, Writer

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._writer = Writer(self._file, compression=CompressionType.ZSTD)
        self._writer.start(profile="ros2", library="fuller")
        return self

    def __exit__(self, *exc) -> None:
        self._writer.finish()
        self._file.close()

    def write(self, topic: str, typename: str, msg, log_time_ns: int) -> None:
        if topic not in self._channels:
            if typename not in self._schemas:
                self._schemas[typename] = self._writer.register_schema(
                    name=typename, encoding="ros2msg", data=msgdef(typename).encode())
            self._channels[topic] = (self._writer.register_channel(
                topic=topic, message_encoding="cdr", schema_id=self._schemas[typename]), typename)
        channel, known = self._channels[topic]
        if known != typename:
            raise BagError(f"{self.path}: topic {topic} was written as {known}, now given {typename}")
        data = msg if isinstance(msg, (bytes, bytearray, memoryview)) else serialize(msg, typename)
        self._writer.add_message(channel_id=channel, log_time=int(log_time_ns), data=bytes(data),
                                 publish_time=int(log_time_ns), sequence=self._sequence)
        self._sequence += 1


def read_bag(path: str | Path) -> Iterator[BagMessage]:
    """Messages in log-time order from an ``.mcap`` file or a rosbag2 folder (mcap or sqlite3)."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"{path}: no such bag (expected an .mcap file or a rosbag2 folder)")
    if path.is_dir():
        yield from _read_rosbag2(path)
    else:
        yield from _read_mcap(path)


def _read_mcap(path: Path) -> Iterator[BagMessage]:
    from mcap.exceptions import McapError
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        try:
            for schema, channel, message in make_reader(f).iter_messages(log_time_order=True):
                if channel.message_encoding != "cdr" or schema is None:
                    raise BagError(f"{path}: topic {channel.topic} is encoded as {channel.message_encoding!r}, "
                                   f"expected 'cdr' with a ros2msg schema (a ROS 2 bag)")
                yield BagMessage(channel.topic, schema.name, message.data, message.log_time)
        except McapError as e:
            raise BagError(f"{path}: not a readable MCAP file ({e})") from e


def _read_rosbag2(path: Path) -> Iterator[BagMessage]:
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

    try:
        with Reader(path) as reader:
            for connection, timestamp, data in reader.messages():
                yield BagMessage(connection.topic, connection.msgtype, bytes(data), timestamp)
    except ReaderError as e:
        raise BagError(f"{path}: not a readable rosbag2 folder ({e})") from e


def topics(path: str | Path) -> dict[str, tuple[str, int]]:
    """topic -> (type name, message count), from the bag's summary (the messages are not read)."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"{path}: no such bag (expected an .mcap file or a rosbag2 folder)")
    if path.is_dir():
        from rosbags.rosbag2 import Reader
        from rosbags.rosbag2.errors import ReaderError

        try:
            with Reader(path) as reader:
                return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
        except ReaderError as e:
            raise BagError(f"{path}: not a readable rosbag2 folder ({e})") from e
    from mcap.exceptions import McapError
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        try:
            summary = make_reader(f).get_summary()
        except McapError as e:
            raise BagError(f"{path}: not a readable MCAP file ({e})") from e
    if summary is None or summary.statistics is None:
        raise BagError(f"{path}: MCAP file without a summary (unfinished recording?); "
                       f"`mcap recover` rewrites it with one")
    counts = summary.statistics.channel_message_counts
    return {c.topic: (summary.schemas[c.schema_id].name, counts.get(cid, 0)) for cid, c in summary.channels.items()}
