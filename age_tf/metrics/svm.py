"""The ALI/GALI linear-SVM protocol: linear SVMs on few labels over encoder features, C chosen on validation.

The ALI protocol (GALI paper, Table 2): features are the concatenation
of the encoder's last three hidden layers and its output mean; labelled sets
of `per_class` examples per class are drawn from a train pool; for each, a
scikit-learn LinearSVC (squared hinge, L2 penalty, one-vs-rest) is fitted
for every C in exp(linspace(-20, 20, 50)) and the C with the lowest
validation error is kept; its test error is recorded. `repeats` fresh
labelled sets give the mean and std of the test error. `encoder_features`
also reads other counts of hidden layers, and each one before its
nonlinearity (the authors' code's readings; docs/faithfulness.md).

Speed, without changing any result: with n labelled examples in D > n
dimensions, the SVM's weight vector lies in the span of the n examples, so
each fit runs on the examples' coordinates in an orthonormal basis Q of that
span (n x n instead of n x D; the same dual problem, hence the same solution
up to rounding), and its weights are mapped back with Q for validation and
test: each fit works in n dimensions instead of D (7178 for digits' features).
And as C grows the squared-hinge SVM converges to its hard-margin limit
(the dual's 1/(2C) term vanishes): successive grid points then change the
weights by a factor exp(-40/49) less each time. Once two successive fits
differ by less than 1e-5 (relative), the rest of the grid could move the
weights by about 2e-5 in all, below LinearSVC's own tolerance (1e-4), and
would tie on validation (the first C with the lowest error is kept), so it
is not fitted.
"""

import warnings

import keras
import numpy as np
import sklearn
import tensorflow as tf
import threadpoolctl
from sklearn import exceptions as sk_exceptions
from sklearn import svm as sk_svm

from age_tf import data
from age_tf.metrics import inputs

GRID_LOG_RANGE = (-20.0, 20.0)
PAPER_GRID_SIZE = 50
PAPER_PER_CLASS = 100
PAPER_REPEATS = 100
HIDDEN_LAYERS = 3
# Where each hidden layer is read: its nonlinearity's output (the papers' text,
# age_tf's default) or its input, the BatchNorm output (what the GALI authors'
# encoders return beside the code, and what the ALI authors' feature script reads).
FEATURE_POINTS = ("activations", "pre_activations")
# Successive fits closer than this (relative norm of the weights and
# intercepts) mean the grid has reached the hard-margin limit.
SATURATION = 1e-5
# Layer types that end a hidden layer of the encoders (nonlinearities).
_ACTIVATIONS = (keras.layers.LeakyReLU, keras.layers.ReLU, keras.layers.ELU,
                keras.layers.PReLU, keras.layers.Activation)


def protocol_arrays(spec, validation, batch_size=1000, **data_args):
  """(pool, pool labels, validation, validation labels, test, test labels) of a labelled dataset.

  Float images in [-1, 1] as the models see them: the train split with its
  last `validation` images held out for choosing C, and the test split.
  data_args go to data.labelled_dataset (data_dir, download).
  """
  arrays = []
  for split in ("train", "test"):
    batches = list(data.labelled_dataset(spec, split, batch_size, **data_args))
    arrays += [np.concatenate([x.numpy() for x, _ in batches]),
               np.concatenate([y.numpy() for _, y in batches])]
  train_x, train_y, test_x, test_y = arrays
  return (train_x[:-validation], train_y[:-validation], train_x[-validation:],
          train_y[-validation:], test_x, test_y)


def c_grid(size=PAPER_GRID_SIZE):
  """exp(linspace(-20, 20, size)): the protocol's C values (size 50 in the papers)."""
  return np.exp(np.linspace(*GRID_LOG_RANGE, size))


def linear_svm_error(pool, pool_labels, validation, validation_labels, test, test_labels, *,
                     per_class=PAPER_PER_CLASS, repeats=PAPER_REPEATS, c_values=None, seed=0,
                     featurize=None, batch_size=500, max_iter=1000):
  """Runs the protocol; returns a dict of the test errors and what was done.

  Args:
    pool, validation, test: inputs (arrays indexed by example); `featurize`
      maps a slice of them to (n, D) features (default: they are features).
    pool_labels, validation_labels, test_labels: integer class labels.
    per_class: labelled examples drawn per class (without replacement) each
      repeat; every class in the pool must have that many.
    repeats: labelled sets drawn (fresh each time, from `seed`).
    c_values: the C grid (default c_grid()).
    batch_size: examples featurized at once.
    max_iter: LinearSVC's iteration limit (fits that reach it are counted).

  Returns:
    {"error": mean test error, "error_std": its std over repeats (ddof 0),
     "errors": per repeat, "c": chosen C per repeat, "validation_error": per
     repeat, "unconverged_fits", "feature_dim", and the counts used}.
  """
  featurize = featurize or (lambda x: np.asarray(x))
  c_values = c_grid() if c_values is None else np.sort(np.asarray(c_values, np.float64))
  pool_labels = np.asarray(pool_labels)
  validation_labels = np.asarray(validation_labels)
  test_labels = np.asarray(test_labels)
  classes = np.unique(pool_labels)
  if len(classes) < 2:
    raise ValueError(f"The SVM protocol needs at least 2 classes in the pool, not {len(classes)}.")
  by_class = [np.flatnonzero(pool_labels == c) for c in classes]
  short = [(c, len(i)) for c, i in zip(classes, by_class) if len(i) < per_class]
  if short:
    raise ValueError(f"The SVM pool has fewer than {per_class} examples of class(es) "
                     f"{', '.join(f'{c} ({n})' for c, n in short)}; lower per_class.")
  val_features = _featurize_all(featurize, validation, batch_size)
  # One BLAS thread: the products here are small, and a threaded BLAS only
  # contends with TensorFlow's own threads for them.
  with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
    weights, errors_val, chosen, unconverged, fits = _choose_svms(
        featurize, pool, pool_labels, by_class, val_features, validation_labels, per_class,
        repeats, c_values, seed, max_iter)
  # The test set streams once through featurize, against every repeat's SVM.
  wrong, count = np.zeros(repeats), 0
  for start in range(0, len(test_labels), batch_size):
    f = np.asarray(featurize(_take(test, slice(start, start + batch_size))), np.float64)
    labels = test_labels[start:start + batch_size]
    for r, (svm_classes, w, b) in enumerate(weights):
      wrong[r] += np.sum(_predict(svm_classes, f, w, b) != labels)
    count += len(labels)
  if not count:
    raise ValueError("The SVM protocol's test set is empty.")
  errors = wrong / count
  return {"error": float(np.mean(errors)), "error_std": float(np.std(errors)),
          "errors": errors.tolist(), "c": chosen, "validation_error": errors_val,
          "fits": fits, "unconverged_fits": unconverged, "feature_dim": int(val_features.shape[1]),
          "per_class": per_class, "labelled": per_class * len(classes),
          "repeats": repeats, "pool": int(len(pool_labels)),
          "validation": int(len(validation_labels)), "test": count,
          "grid": {"log_min": float(np.log(c_values[0])), "log_max": float(np.log(c_values[-1])),
                   "size": int(len(c_values))}}


def _choose_svms(featurize, pool, pool_labels, by_class, val_features, validation_labels,
                 per_class, repeats, c_values, seed, max_iter):
  """Per repeat: a fresh labelled set, the grid of fits, the best on validation.

  Returns ([(classes, W (D, K), b)], validation errors, chosen C, unconverged fits, fits).
  """
  rng = np.random.default_rng(seed)
  weights, errors_val, chosen, unconverged, fits = [], [], [], 0, 0
  for _ in range(repeats):
    index = np.concatenate([rng.choice(i, per_class, replace=False) for i in by_class])
    x = np.asarray(featurize(_take(pool, index)), np.float64)
    y = pool_labels[index]
    basis = span_basis(x) if x.shape[0] < x.shape[1] else None
    x_fit = x @ basis if basis is not None else x
    v_fit = val_features @ basis if basis is not None else val_features
    best, previous = None, None
    for c in c_values:
      with warnings.catch_warnings(), sklearn.config_context(
          assume_finite=True, skip_parameter_validation=True):
        warnings.simplefilter("ignore", sk_exceptions.ConvergenceWarning)
        svc = sk_svm.LinearSVC(C=c, dual=True, max_iter=max_iter, random_state=0).fit(x_fit, y)
      fits += 1
      unconverged += int(np.max(svc.n_iter_) >= max_iter)
      error = float(np.mean(_predict(svc.classes_, v_fit, svc.coef_.T, svc.intercept_) !=
                            validation_labels))
      if best is None or error < best[0]:
        w = basis @ svc.coef_.T if basis is not None else svc.coef_.T
        best = (error, c, (svc.classes_, w, svc.intercept_.copy()))
      current = np.concatenate([svc.coef_.ravel(), svc.intercept_])
      if previous is not None and (np.linalg.norm(current - previous) <
                                   SATURATION * np.linalg.norm(current)):
        break  # saturated: larger C give this same SVM (see the module doc)
      previous = current
    errors_val.append(best[0])
    chosen.append(float(best[1]))
    weights.append(best[2])
  return weights, errors_val, chosen, unconverged, fits


def span_basis(x, rcond=1e-12):
  """An orthonormal basis (D, r) of the span of the rows of x (n, D), n < D.

  From the eigendecomposition of the n x n Gram matrix x x^T = U S U^T:
  Q = x^T U S^(-1/2), dropping directions with S below rcond * max(S). (A
  QR of the D x n matrix gives the same span but took 20x longer here.)
  """
  s, u = np.linalg.eigh(x @ x.T)
  keep = s > rcond * s.max()
  return x.T @ (u[:, keep] / np.sqrt(s[keep]))


def _take(array, index):
  if isinstance(array, tf.Tensor):
    return tf.gather(array, np.arange(array.shape[0])[index])
  return array[index]


def _featurize_all(featurize, data, batch_size):
  chunks = [np.asarray(featurize(_take(data, slice(s, s + batch_size))), np.float64)
            for s in range(0, len(data), batch_size)]
  if not chunks:
    raise ValueError("The SVM protocol's validation set is empty.")
  return np.concatenate(chunks)


def _predict(classes, features, w, b):
  """LinearSVC.predict from (D, K) weights: argmax over K classes, or the sign when K = 1."""
  scores = features @ w + b
  if scores.shape[1] == 1:
    return classes[(scores[:, 0] > 0).astype(int)]
  return classes[np.argmax(scores, axis=1)]


# ---------------------------------------------------------------- encoder features


def hidden_layers(encoder, count=HIDDEN_LAYERS):
  """The encoder's last `count` hidden layers: its nonlinearities before the output, in order.

  Both the AGE DCGAN encoder and the ALI encoder end every hidden layer with
  a LeakyReLU; the output layer has none (ALI) or is not a hidden layer.
  """
  if count < 1:
    raise ValueError(f"The SVM features need at least 1 hidden layer, not {count}.")
  outputs = {id(t) for t in encoder.outputs}
  found = [layer for layer in encoder.layers
           if isinstance(layer, _ACTIVATIONS) and id(layer.output) not in outputs]
  if len(found) < count:
    raise ValueError(f"Encoder {encoder.name} has {len(found)} hidden nonlinearity layers; "
                     f"the SVM features need {count}.")
  return found[-count:]


def encoder_features(model, count=HIDDEN_LAYERS, point="activations",
                     batch_size=inputs.DEFAULT_BATCH_SIZE):
  """A function images -> (N, D) float32 numpy features: the last `count` hidden layers
  (flattened; read at `point`, one of FEATURE_POINTS) and the code mean
  model.encode(x), concatenated; inference mode."""
  if point not in FEATURE_POINTS:
    raise ValueError(f"feature point {point!r} is not one of {', '.join(FEATURE_POINTS)}")
  layers = hidden_layers(model.encoder, count)
  read = [layer.output if point == "activations" else layer.input for layer in layers]
  hidden = keras.Model(model.encoder.inputs, read, name="encoder_hidden")

  @tf.function
  def run(images):
    parts = hidden(images, training=False)
    parts = parts if isinstance(parts, (list, tuple)) else [parts]
    flat = [tf.reshape(p, [tf.shape(p)[0], -1]) for p in parts]
    return tf.concat(flat + [tf.cast(model.encode(images, training=False), flat[0].dtype)], -1)

  def featurize(images):
    return inputs.map_batches(run, images, batch_size)

  return featurize
