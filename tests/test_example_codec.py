"""The vectorized Example encoder parses exactly like TFDS's own serialization."""
import numpy as np
import pytest
import tensorflow as tf

from relay_data import example_codec, relabeled


@pytest.mark.parametrize("level,dims", [("low", (59, 30, 9)), ("high", (59, 30, 9)), ("bc", (300, 30, 9)),
                                        ("final-goal", (1, 1, 1))])
def test_codec_records_decode_with_tfds_features(level, dims):
  features = relabeled.example_features(level, *dims)
  codec = example_codec.FloatExampleCodec({k: int(v.shape[0]) for k, v in features.items()})
  rng = np.random.default_rng(0)
  batch = {k: rng.normal(size=(7, v.shape[0])).astype(np.float32) for k, v in features.items()}
  batch[next(iter(batch))][3, 0] = -0.0  # sign bits survive
  records = codec.encode(batch)
  assert len(records) == 7 and len({len(r) for r in records}) == 1
  for i, record in enumerate(records):
    decoded = features.deserialize_example(tf.constant(record))
    for k in batch:
      np.testing.assert_array_equal(decoded[k].numpy(), batch[k][i])
    reference = features.serialize_example({k: v[i] for k, v in batch.items()})
    assert tf.train.Example.FromString(record) == tf.train.Example.FromString(reference)


def test_codec_rejects_wrong_shapes():
  codec = example_codec.FloatExampleCodec({"goal": 3, "observation": 2})
  with pytest.raises(ValueError, match="field 'goal': expected shape \\(2, 3\\)"):
    codec.encode({"goal": np.zeros((2, 4)), "observation": np.zeros((2, 2))})
