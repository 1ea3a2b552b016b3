"""The three losses of the paper as separate, testable functions.

Notation: fc, fi, ac, ai are face/audio content/identity sequences (B, T', D), L2-normalised.
All matching tasks are multi-way classification over scaled cosine logits `w * cos + b`:
- content: within a track, face step t must pick audio step t among the track's T' steps;
- identity: across tracks, face of track b must pick the voice of track b among B voices;
- confusion: the same tasks computed from the WRONG factor's embeddings, trained towards the
  uniform distribution (Alvi et al. 2018), so those embeddings carry no signal for the task.
"""

from __future__ import annotations

import tensorflow as tf


def time_pool(sequence: tf.Tensor) -> tf.Tensor:
    """Time-mean of an embedding sequence, re-normalised: (B, T', D) -> (B, D)."""
    return tf.math.l2_normalize(tf.reduce_mean(sequence, axis=1), axis=-1)


def _diagonal_targets(logits: tf.Tensor, offset) -> tf.Tensor:
    """Row n of (..., N, M) logits targets column n + offset."""
    return tf.broadcast_to(tf.range(tf.shape(logits)[-2]) + offset, tf.shape(logits)[:-1])


def matching_cross_entropy(logits: tf.Tensor, offset=0) -> tf.Tensor:
    """Mean cross-entropy of matching logits (..., N, M) where row n targets column n + offset
    (square logits, offset 0: the diagonal; gathered negatives: the replica's own block)."""
    labels = _diagonal_targets(logits, offset)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(ce)


def matching_accuracy(logits: tf.Tensor, offset=0) -> tf.Tensor:
    """Top-1 accuracy of matching logits (..., N, M): argmax == n + offset."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    target = _diagonal_targets(logits, offset)
    return tf.reduce_mean(tf.cast(tf.equal(predicted, target), tf.float32))


def uniform_confusion(logits: tf.Tensor) -> tf.Tensor:
    """Confusion loss: cross-entropy to the uniform target, mean of -(1/K) sum_k log p_k.

    Minimal (= log K) exactly when the softmax over the last axis is uniform.
    Args:
      logits: (..., K).
    """
    return -tf.reduce_mean(tf.nn.log_softmax(logits, axis=-1))


def content_logits(face: tf.Tensor, audio: tf.Tensor, similarity) -> tf.Tensor:
    """Within-track matching logits over time: (B, T', D) x (B, T', D) -> (B, T', T').

    logits[b, t, t'] = w * cos(face[b, t], audio[b, t']) + bias; the target of row t is t.
    `similarity` is a callable (a, b) -> logits, e.g. a `ScaledCosine` layer.
    """
    return similarity(face, audio)


def identity_logits(face: tf.Tensor, voice: tf.Tensor, similarity) -> tf.Tensor:
    """Across-track matching logits: (B, D) x (B, D) -> (B, B); the target of row b is b."""
    return similarity(face, voice)


def content_loss(logits: tf.Tensor) -> tf.Tensor:
    """L_content from `content_logits` (B, T', T'): mean CE over all tracks and time steps."""
    return matching_cross_entropy(logits)


def identity_loss(logits: tf.Tensor, symmetric: bool = False,
                  reverse_logits: tf.Tensor | None = None, offset=0) -> tf.Tensor:
    """L_identity from `identity_logits` (B, B): face -> voice CE over the batch, averaged
    with voice -> face when `symmetric`.

    With negatives gathered across replicas, `logits` is (B_local, B_global) face -> all voices,
    `reverse_logits` (B_local, B_global) voice -> all faces, and row n targets n + `offset`.
    """
    loss = matching_cross_entropy(logits, offset)
    if symmetric:
        if reverse_logits is None:
            reverse_logits = tf.transpose(logits)
        loss = 0.5 * (loss + matching_cross_entropy(reverse_logits, offset))
    return loss


def select_steps(sequence: tf.Tensor, steps: tf.Tensor) -> tf.Tensor:
    """Picks one time step per track: (B, T', D), (B,) int -> (B, D)."""
    return tf.gather(sequence, steps, axis=1, batch_dims=1)
