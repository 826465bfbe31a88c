"""Vectorized `tf.train.Example` encoding of columnar chunks (the relabeled datasets' records).

A relabeled record holds a chunk of n consecutive examples of one episode, one feature per field
with a leading chunk dimension: float fields as a packed `float_list` of the row-major [n, d]
array, integer columns as a packed `int64_list`. In the protobuf wire format a packed float list
is its little-endian bytes behind a few varint headers, so a chunk encodes as the header bytes
plus the arrays' own buffers (no per-example or per-value Python work): `encode_pieces` returns
those pieces for a writer that frames them without joining, `encode` joins them. Records parse
as the TFDS features of `relay_data.relabeled.example_features` (Tensor(shape=(None, d))), which
the tests check against TFDS's own encoder and decoder.
"""
import functools
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

_FLOAT_LIST, _INT64_LIST = 2, 3  # tf.train.Feature oneof field numbers


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _len_delimited(field: int, payload_len: int) -> bytes:
  return bytes([(field << 3) | 2]) + _varint(payload_len)


_VARINT_LIMITS = np.array([1 << (7 * i) for i in range(1, 9)], np.int64)  # 2^7, 2^14, ..., 2^56


def varint_column(values: np.ndarray):
  """Varint bytes of a column of non-negative ints, and where each value's bytes end.

  Returns (uint8 array, int64 ends): value i is bytes[ends[i-1]:ends[i]], so any run of values
  is one slice. Vectorized one 7-bit group at a time over flat arrays (broadcasting against a
  tiny group axis is ~10x slower in numpy); a constant column (an episode's index) is one
  varint repeated.
  """
  v = np.asarray(values, dtype=np.int64).reshape(-1)
  n = v.size
  if n == 0:
    return np.zeros(0, np.uint8), np.zeros(0, np.int64)
  low, high = int(v.min()), int(v.max())
  if low < 0:
    raise ValueError("varints encodes non-negative values only")
  if low == high:
    one = _varint(low)
    return np.frombuffer(one * n, np.uint8), np.arange(1, n + 1, dtype=np.int64) * len(one)
  nbytes = 1 + np.searchsorted(_VARINT_LIMITS, v, side="right")
  ends = np.cumsum(nbytes)
  starts = ends - nbytes
  out = np.empty(int(ends[-1]), np.uint8)
  for i in range(int(nbytes[np.argmax(v)])):
    has = slice(None) if i == 0 else nbytes > i
    group = ((v[has] >> (7 * i)) & 0x7F).astype(np.uint8)
    group |= (nbytes[has] > i + 1).astype(np.uint8) << 7  # continuation bit on all but the last byte
    out[starts[has] + i] = group
  return out, ends


def varints(values: np.ndarray) -> bytes:
  """Protobuf varint encoding of non-negative int64 values (a packed int64 list's payload)."""
  return varint_column(values)[0].tobytes()


@functools.lru_cache(maxsize=4096)
def _entry_header(key: str, kind: int, payload_len: int) -> bytes:
  """Bytes of a Features.feature map entry up to its packed values (cached: chunks repeat sizes)."""
  key_bytes = key.encode()
  value_list_len = len(_len_delimited(1, payload_len)) + payload_len        # {Float,Int64}List{value: packed}
  feature_len = len(_len_delimited(kind, value_list_len)) + value_list_len  # Feature{kind}
  entry_len = len(_len_delimited(1, len(key_bytes))) + len(key_bytes) + \
      len(_len_delimited(2, feature_len)) + feature_len                      # map entry {key, value}
  return (_len_delimited(1, entry_len)                                       # Features.feature entry
          + _len_delimited(1, len(key_bytes)) + key_bytes
          + _len_delimited(2, feature_len)
          + _len_delimited(kind, value_list_len)
          + _len_delimited(1, payload_len))


class ChunkCodec:
  """Encodes a chunk (dict of [n, d] float arrays and [n] int arrays) as one Example record.

  float_dims: float32 fields and their widths d (e.g. observation 59, action 9, goal 30).
  int_fields: int64 columns, one value per example (e.g. episode_index, step).
  """

  def __init__(self, float_dims: Dict[str, int], int_fields=()):
    self.float_dims = dict(sorted(float_dims.items()))
    self.int_fields = tuple(sorted(int_fields))
    self._keys = sorted(list(self.float_dims) + list(self.int_fields))

  def encode_pieces(self, chunk: Dict[str, np.ndarray]) -> List:
    """The record as bytes-like pieces (headers and the arrays' own buffers, not copied) whose
    concatenation is the serialized Example."""
    return next(self.encode_chunks(chunk, len(chunk[self._keys[0]])))

  def encode_chunks(self, columns: Dict[str, np.ndarray], chunk_size: int,
                    encoded: Optional[Dict[str, Tuple[np.ndarray, np.ndarray]]] = None) -> Iterator[List]:
    """Records (as pieces) of consecutive chunks of up to `chunk_size` rows of `columns`.

    Integer columns are varint-encoded once for all chunks; a chunk takes a slice of them.
    `encoded`: integer columns already encoded (`varint_column` of the values), used instead of
    `columns[key]`; for a column many calls share (e.g. the step column of every episode of one
    length), so it is encoded once.
    """
    n = len(columns[self._keys[0]] if self._keys[0] in columns else encoded[self._keys[0]][1])
    ints = {}
    for key in self.int_fields:
      if encoded is not None and key in encoded:
        ints[key] = encoded[key]
        if len(ints[key][1]) != n:
          raise ValueError(f"field {key!r}: {len(ints[key][1])} encoded values for {n} rows")
        continue
      values = np.asarray(columns[key])
      if values.shape != (n,):
        raise ValueError(f"field {key!r}: expected shape ({n},), got {values.shape}")
      ints[key] = varint_column(values)
    floats = {}
    for key, dim in self.float_dims.items():
      values = np.ascontiguousarray(columns[key], dtype="<f4")
      if values.shape != (n, dim):
        raise ValueError(f"field {key!r}: expected shape ({n}, {dim}), got {values.shape}")
      floats[key] = values
    for start in range(0, n, chunk_size):
      stop = min(start + chunk_size, n)
      pieces, total = [], 0
      for key in self._keys:
        if key in floats:
          payload, kind = memoryview(floats[key][start:stop]).cast("B"), _FLOAT_LIST
        else:
          data, ends = ints[key]
          payload, kind = memoryview(data[(ends[start - 1] if start else 0):ends[stop - 1]]), _INT64_LIST
        header = _entry_header(key, kind, len(payload))
        pieces += [header, payload]
        total += len(header) + len(payload)
      yield [_len_delimited(1, total)] + pieces                             # Example.features

  def encode(self, chunk: Dict[str, np.ndarray]) -> bytes:
    return b"".join(self.encode_pieces(chunk))
