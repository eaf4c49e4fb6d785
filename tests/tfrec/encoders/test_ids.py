"""tfrec/encoders/ids.py: the id embedding with a shared out-of-vocabulary row."""

import numpy as np
import tensorflow as tf

from tfrec.encoders.ids import IdEmbedding


def test_id_embedding_oov_and_reload():
    layer = IdEmbedding(["a", "b"], 4)
    out = layer(tf.constant(["a", "zzz", "yyy"]))
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out[1], out[2])  # unknown ids share the OOV row
    clone = IdEmbedding.from_config(layer.get_config())
    clone(tf.constant(["a"]))
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(tf.constant(["b"])), layer(tf.constant(["b"])))
