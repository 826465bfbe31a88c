"""TFRecord framing by hand: index a file's records, read exact byte ranges, write records.

A TFRecord file is a sequence of `uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)` (little-endian). Knowing the record boundaries lets a pipeline plan
its tasks as exact byte ranges of the source files: each task reads its range once with one
`seek` + `read` and checks both CRCs of every record, instead of re-reading every earlier record
of the file (`skip`/`take`) or building a TFDS reader per task. Cluster paths (gs://, s3://,
hdfs://) go through `tf.io.gfile`, so they work wherever TensorFlow's filesystems do; local paths
go through Python's own file objects, which cost ~100x less per call (indexing a file seeks and
reads 12 bytes per record: 0.2 ms a record through gfile) and copy less per byte.
"""
import os
import struct
from typing import List, Sequence, Tuple

import google_crc32c

from relay_data.errors import DataError

_HEADER = 12  # uint64 length + uint32 crc of the length
_FOOTER = 4   # uint32 crc of the data


def _mask(crc: int) -> int:
  """TFRecord's CRC masking (rotate right by 15, add a constant)."""
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _open(path: str, mode: str):
  """A binary file object: Python's for a local path, `tf.io.gfile.GFile` for a URL."""
  if "://" not in path:
    return open(path, mode)  # pylint: disable=unspecified-encoding  (binary modes only)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.io.gfile.GFile(path, mode)


def _size(path: str) -> int:
  if "://" not in path:
    return os.path.getsize(path)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.io.gfile.stat(path).length


def index_records(path: str) -> List[Tuple[int, int]]:
  """(offset, total size) of every record of `path`, reading only the 12-byte headers.

  Checks each length's CRC, so a truncated or corrupt file fails here, in the driver, with the
  offset of the bad record.
  """
  size = _size(path)
  out = []
  with _open(path, "rb") as f:
    pos = 0
    while pos < size:
      f.seek(pos)
      header = f.read(_HEADER)
      if len(header) < _HEADER:
        raise DataError(f"truncated TFRecord header at byte {pos} (file size {size})", path=path)
      length, length_crc = struct.unpack("<QI", header)
      if _mask(google_crc32c.value(header[:8])) != length_crc:
        raise DataError(f"corrupt TFRecord: bad length checksum at byte {pos}", path=path)
      total = _HEADER + length + _FOOTER
      if pos + total > size:
        raise DataError(f"truncated TFRecord: record at byte {pos} needs {total} bytes, file has "
                        f"{size - pos} left", path=path)
      out.append((pos, total))
      pos += total
  return out


def read_range(path: str, start: int, end: int) -> List[bytes]:
  """The records in bytes [start, end) of `path` (a range from `index_records`), CRCs checked."""
  with _open(path, "rb") as f:
    f.seek(start)
    data = f.read(end - start)
  return split_records(data, path, start)


def split_records(data: bytes, path: str = None, base: int = 0) -> List[bytes]:
  """Splits framed TFRecord bytes into records, checking both CRCs of each."""
  view = memoryview(data)
  records, pos = [], 0
  while pos < len(data):
    if pos + _HEADER > len(data):
      raise DataError(f"truncated TFRecord header at byte {base + pos}", path=path)
    length, length_crc = struct.unpack_from("<QI", data, pos)
    if _mask(google_crc32c.value(data[pos:pos + 8])) != length_crc:
      raise DataError(f"corrupt TFRecord: bad length checksum at byte {base + pos}", path=path)
    begin, stop = pos + _HEADER, pos + _HEADER + length
    if stop + _FOOTER > len(data):
      raise DataError(f"truncated TFRecord at byte {base + pos}", path=path)
    record = bytes(view[begin:stop])
    (data_crc,) = struct.unpack_from("<I", data, stop)
    if _mask(google_crc32c.value(record)) != data_crc:
      raise DataError(f"corrupt TFRecord: bad data checksum in the record at byte {base + pos}", path=path)
    records.append(record)
    pos = stop + _FOOTER
  return records


class RecordWriter:
  """Writes TFRecords given as sequences of byte pieces (`write([header, array_buffer, ...])`)."""

  def __init__(self, path: str):
    self._file = _open(path, "wb")
    self.bytes_written = 0
    self.records_written = 0

  def write(self, pieces: Sequence) -> None:
    """Frames the concatenation of `pieces` (bytes-like: bytes, memoryviews of arrays) as one
    record: one join copy, one CRC pass."""
    record = b"".join(pieces)
    head = struct.pack("<Q", len(record))
    self._file.write(head + struct.pack("<I", _mask(google_crc32c.value(head))))
    self._file.write(record)
    self._file.write(struct.pack("<I", _mask(google_crc32c.value(record))))
    self.bytes_written += _HEADER + len(record) + _FOOTER
    self.records_written += 1

  def close(self) -> None:
    self._file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
