"""The vectorized chunk encoder writes exactly what TFDS's own serialization writes, and TFDS parses it."""
import numpy as np
import pytest
import tensorflow as tf

from relay_data import example_codec, relabeled


def _chunk(features_dims, n, rng):
  chunk = {k: rng.normal(size=(n, d)).astype(np.float32) for k, d in features_dims.items()}
  chunk["episode_index"] = np.full(n, 12345, np.int64)
  chunk["step"] = np.arange(n, dtype=np.int64) * 997
  return chunk


@pytest.mark.parametrize("level,dims", [("low", (59, 30, 9)), ("high", (59, 30, 9)), ("bc", (300, 30, 9)),
                                        ("final-goal", (1, 1, 1))])
@pytest.mark.parametrize("n", [1, 7, 1024])
def test_chunk_records_decode_with_tfds_features(level, dims, n):
  features = relabeled.example_features(level, *dims)
  float_dims = relabeled.example_dims(level, *dims)
  codec = example_codec.ChunkCodec(float_dims, relabeled.INDEX_FIELDS)
  chunk = _chunk(float_dims, n, np.random.default_rng(n))
  chunk["observation"][0, 0] = -0.0  # sign bits survive
  record = codec.encode(chunk)
  assert record == b"".join(codec.encode_pieces(chunk))
  decoded = features.deserialize_example(tf.constant(record))
  for k in chunk:
    np.testing.assert_array_equal(decoded[k].numpy(), chunk[k])
  assert np.signbit(decoded["observation"].numpy()[0, 0])
  reference = features.serialize_example(chunk)
  assert tf.train.Example.FromString(record) == tf.train.Example.FromString(reference)


def test_varints_match_protobuf():
  values = np.array([0, 1, 127, 128, 300, 16383, 16384, 2**31, 2**35 + 7, 2**56, 2**63 - 1], np.int64)
  example = tf.train.Example()
  example.features.feature["x"].int64_list.value.extend(values.tolist())
  wire = example.SerializeToString()
  assert example_codec.varints(values) in wire
  assert tf.train.Int64List.FromString(b"\x0a" + bytes([len(example_codec.varints(values))]) +
                                       example_codec.varints(values)).value == values.tolist()
  with pytest.raises(ValueError, match="non-negative"):
    example_codec.varints(np.array([-1]))


def test_codec_rejects_wrong_shapes():
  codec = example_codec.ChunkCodec({"goal": 3, "observation": 2}, ("step",))
  with pytest.raises(ValueError, match="field 'goal': expected shape \\(2, 3\\)"):
    codec.encode({"goal": np.zeros((2, 4)), "observation": np.zeros((2, 2)), "step": np.zeros(2, np.int64)})
  with pytest.raises(ValueError, match="field 'step': expected shape \\(2,\\)"):
    codec.encode({"goal": np.zeros((2, 3)), "observation": np.zeros((2, 2)), "step": np.zeros(3, np.int64)})


def test_pre_encoded_int_columns_give_the_same_records():
  """A column handed over already varint-encoded (the pipeline encodes each episode length's step
  column once) yields byte-identical records; a wrong-length one is refused."""
  codec = example_codec.ChunkCodec({"goal": 3, "observation": 2}, relabeled.INDEX_FIELDS)
  rng = np.random.default_rng(3)
  chunk = _chunk({"goal": 3, "observation": 2}, 2500, rng)
  plain = [b"".join(p) for p in codec.encode_chunks(chunk, 1024)]
  step = chunk.pop("step")
  encoded = {"step": example_codec.varint_column(step)}
  assert [b"".join(p) for p in codec.encode_chunks(chunk, 1024, encoded=encoded)] == plain
  assert len(plain) == 3
  with pytest.raises(ValueError, match="field 'step': 2499 encoded values for 2500 rows"):
    list(codec.encode_chunks(chunk, 1024, encoded={"step": example_codec.varint_column(step[1:])}))
