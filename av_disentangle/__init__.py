"""av-disentangle: self-supervised, disentangled speaker embeddings from talking-face video.

A TensorFlow / Keras 3 implementation of Nagrani, Chung, Albanie, Zisserman, "Disentangled
Speech Embeddings using Cross-modal Self-supervision", ICASSP 2020.
"""

__version__ = "0.1.0"
