"""Training objectives: NT-Xent, supervised cross-entropy, distillation, L2 weight decay.

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import tensorflow as tf

LARGE_NUM = 1e9  # subtracted from an anchor's similarity with itself (masked, not removed)

# Substrings of Variable.name that the name-based decay rules test (K18, K19).
BATCH_NORM_NAME = 'batch_normalization'
BIAS_NAME = 'bias'
SUPERVISED_HEAD_NAME = 'head_supervised'


def cross_replica_concat(tensor):
  """Concatenates `tensor` from every replica along axis 0, replica-major.

  Must run in a replica context. Scatter into a zero [R, ...] tensor + all-reduce SUM, which is
  differentiable, so each replica's embeddings receive gradients from the whole global batch.
  """
  context = tf.distribute.get_replica_context()
  num_replicas = context.num_replicas_in_sync if context else 1
  if num_replicas <= 1:
    return tensor
  stacked = tf.scatter_nd(
      indices=[[context.replica_id_in_sync_group]],
      updates=[tensor],
      shape=tf.concat([[num_replicas], tf.shape(tensor)], axis=0))
  stacked = context.all_reduce(tf.distribute.ReduceOp.SUM, stacked)
  return tf.reshape(stacked, tf.concat([[-1], tf.shape(tensor)[1:]], axis=0))


def contrastive_loss(hidden, hidden_norm=True, temperature=1.0):
  """NT-Xent loss of `hidden` = [2n, d] (view 1 rows, then view 2 rows of the same images).

  Inside `strategy.run` with several replicas, negatives come from the global batch and the
  positives' columns are offset by replica id. Returns (loss averaged over the n local anchors,
  logits_ab [n, N], labels [n, 2N]) where N is the global number of images.
  """
  if hidden_norm:
    hidden = tf.math.l2_normalize(hidden, axis=-1)
  hidden1, hidden2 = tf.split(hidden, 2, axis=0)
  local_size = tf.shape(hidden1)[0]

  context = tf.distribute.get_replica_context()
  if context is not None and context.num_replicas_in_sync > 1:
    hidden1_large = cross_replica_concat(hidden1)
    hidden2_large = cross_replica_concat(hidden2)
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
  else:
    hidden1_large, hidden2_large = hidden1, hidden2
    replica_id = 0
  global_size = tf.shape(hidden1_large)[0]

  positive_index = tf.range(local_size) + replica_id * local_size
  labels = tf.one_hot(positive_index, global_size * 2)
  self_mask = tf.one_hot(positive_index, global_size)

  def similarity(a, b):
    return tf.matmul(a, b, transpose_b=True) / temperature

  logits_aa = similarity(hidden1, hidden1_large) - self_mask * LARGE_NUM
  logits_bb = similarity(hidden2, hidden2_large) - self_mask * LARGE_NUM
  logits_ab = similarity(hidden1, hidden2_large)
  logits_ba = similarity(hidden2, hidden1_large)

  loss_a = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat([logits_ab, logits_aa], 1))
  loss_b = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat([logits_ba, logits_bb], 1))
  loss = tf.reduce_mean(loss_a + loss_b)
  return loss, logits_ab, labels


def supervised_loss(labels, logits):
  """Softmax cross-entropy with one-hot `labels`, averaged over the local batch."""
  return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, logits))


def distillation_loss(teacher_logits, student_logits, temperature=1.0):
  """tau^2 * CE(softmax(teacher / tau), softmax(student / tau)), averaged over the local batch.

  The tau^2 factor (Hinton et al. 2015; the SimCLRv2 distillation colab's add_kd_loss) keeps
  the gradients' size independent of tau. Like `supervised_loss`, the caller divides by the
  number of replicas, so the summed gradients are those of the global-batch mean. The teacher
  receives no gradient.
  """
  teacher_probs = tf.nn.softmax(tf.stop_gradient(teacher_logits) / temperature)
  per_example = tf.nn.softmax_cross_entropy_with_logits(teacher_probs,
                                                        student_logits / temperature)
  return tf.reduce_mean(per_example) * temperature ** 2


def weight_decay_variables(trainable_variables, optimizer_name):
  """The variables explicitly L2-decayed in the loss, chosen by name like the reference (K19).

  LARS decays everything else itself, so only the supervised-head kernel is left; momentum/Adam
  decay every non-batch-norm variable here, biases included.
  """
  if 'lars' in optimizer_name:
    return [v for v in trainable_variables
            if SUPERVISED_HEAD_NAME in v.name and BIAS_NAME not in v.name]
  return [v for v in trainable_variables if BATCH_NORM_NAME not in v.name]


def weight_decay_loss(trainable_variables, optimizer_name, weight_decay):
  """weight_decay * sum(l2_loss(v)) over `weight_decay_variables`; a float32 0.0 if none."""
  variables = weight_decay_variables(trainable_variables, optimizer_name)
  if not variables:
    return tf.constant(0., tf.float32)
  l2 = tf.add_n([tf.cast(tf.nn.l2_loss(v), tf.float32) for v in variables])
  return weight_decay * l2
