"""Data preparation (video -> sharded TFRecords) and tf.data input pipelines."""
