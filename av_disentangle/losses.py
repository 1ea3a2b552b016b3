"""The three losses of the paper as separate, testable functions.

Notation: face_content, face_identity, audio_content, audio_identity are (B, T', D) embedding
sequences, L2-normalised per step. All matching tasks are multi-way classification over
scaled cosine logits `w * cos + b`:
- content: within a track, face step t must pick audio step t among the track's T' steps;
- identity: across tracks, face of track b must pick the voice of track b among B voices;
- confusion: the same tasks computed from the WRONG factor's embeddings, trained towards the
  uniform distribution (Alvi et al. 2018), so those embeddings carry no signal for the task.

The identity task owns its cross-replica negatives (`IdentityLoss`, `Negatives`), as SimCLR's
loss owns `cross_replica_concat` and the label offsets (tensorflow/models
official/projects/simclr/losses/contrastive_losses.py: `cross_replica_concat`, and
`labels_idx = tf.range(batch_size) + replica_id * batch_size` in `ContrastiveLoss.__call__`).
"""

from __future__ import annotations

from typing import NamedTuple

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


# === Identity task and its negatives (per replica or gathered across replicas) ===
class Negatives(NamedTuple):
    """The candidates of the identity (across-track) task and where this replica's own rows are.

    Attributes:
      embeddings: (B_neg, D); B_neg = B (per replica) or B_global (gathered across replicas).
      offset: () int32 tensor, row n of this replica's (B, ...) batch targets
        `embeddings[n + offset]` (0 per replica; replica_id * B when gathered). Always a tensor,
        so a `Negatives` can be passed to a Keras layer.
    """

    embeddings: tf.Tensor
    offset: tf.Tensor


class IdentityTerms(NamedTuple):
    """What `IdentityLoss` returns: the loss, the face -> voice logits (B, B_neg) and their
    target offset (for the accuracy)."""

    loss: tf.Tensor
    logits: tf.Tensor
    offset: tf.Tensor | int


class IdentityLoss:
    """L_identity with its negatives: face identity of each track against the voices of the
    batch, target its own voice; optionally symmetric (voice -> face too).

    Negatives are per replica unless `gather_negatives`: then, under a strategy with more than
    one replica in sync, the embeddings are all-gathered (differentiably) across replicas, so each
    track is matched against every voice of the global batch - the one-device loss on the global
    batch. `negatives()` hands the same gathering to the other identity-task terms (the
    disentanglement terms), so they use the same negatives as this loss.

    Args:
      similarity: callable (a, b) -> logits, e.g. a `ScaledCosine` layer (w * cos + b).
      symmetric: also match voice -> face and average the two cross-entropies.
      gather_negatives: all-gather the negatives across replicas.
    """

    def __init__(self, similarity, symmetric: bool = False, gather_negatives: bool = False):
        self.similarity = similarity
        self.symmetric = symmetric
        self.gather_negatives = gather_negatives

    def gathering(self) -> bool:
        """True when negatives come from every replica (in a replica context with > 1 replica)."""
        context = tf.distribute.get_replica_context()
        return bool(self.gather_negatives and context is not None
                    and context.num_replicas_in_sync > 1)

    def negatives(self, embeddings: tf.Tensor) -> Negatives:
        """(B, D) -> `Negatives`: all-gathered (B_global, D) with this replica's offset when
        gathering, else the embeddings themselves and offset 0."""
        if not self.gathering():
            return Negatives(embeddings, tf.constant(0, tf.int32))
        context = tf.distribute.get_replica_context()
        offset = context.replica_id_in_sync_group * tf.shape(embeddings)[0]
        return Negatives(context.all_gather(embeddings, axis=0), offset)

    def __call__(self, face: tf.Tensor, voice: tf.Tensor) -> IdentityTerms:
        """face, voice: (B, D) identity embeddings of the same B tracks (row b = track b).

        Per replica: logits (B, B), diagonal targets. Gathered: (B, B_global) against the
        all-gathered voices (and, when symmetric, voice -> all-gathered faces); row n targets
        replica_id * B + n.
        """
        if not self.gathering():
            logits = identity_logits(face, voice, self.similarity)
            return IdentityTerms(identity_loss(logits, self.symmetric), logits, 0)
        voices = self.negatives(voice)
        faces = self.negatives(face)
        forward = identity_logits(face, voices.embeddings, self.similarity)
        reverse = identity_logits(voice, faces.embeddings, self.similarity)
        loss = identity_loss(forward, self.symmetric, reverse, voices.offset)
        return IdentityTerms(loss, forward, voices.offset)
