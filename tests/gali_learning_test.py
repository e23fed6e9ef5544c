"""ALI and GALI-4 learn on digits: reconstructions better than untrained, D in play.

Each run is `python -m age_tf.train --method=M --dataset=digits` with the
digits defaults but for the batch and the budget, which the test sets
itself (the family's digits default is batch 64 for 87 epochs): batch 32,
920 steps for GALI-4 and 600 for ALI (about 5 and 1.5 minutes of one core).
The instance noise decays over the run's own length. At batch 32 and 920
steps, GALI-4 (seeds 1, 2, 3 and 123) reconstructed at 0.34, 0.34, 0.36
and 0.28 x the untrained model's error (required: below 0.6); at 600 steps at 0.44, 0.52
and 0.62, too little room. ALI at batch 32 and 600 steps (seeds 1-3):
0.40, 0.51 and 0.47 x the untrained model's error (required: below 1),
discriminator accuracy over the second half 0.80, 0.80 and 0.87 (at least
0.55) and over the last quarter 0.78, 0.77 and 0.85 (at most 0.95). At
batch 64 (the digits default) the same bars held at 920 steps for both,
and failed to hold with room at 460. Thresholds, on the 300 test images in
[0, 1]:

* The untrained model (the same seed's weights before training) scores a
  pixel MSE of 0.143 (its generator paints flat grey). GALI-4 must score
  below 0.6 x that. ALI must beat it: at these budgets ALI's generator
  draws digits but its codes need not carry the input's digit (ALI's known
  weakness that GALI's extra classes address; see the README's digits
  section), and a sharp wrong digit scores about 0.10 (a CI run at batch 64
  once scored 0.106, with 0.101 to another image).
* GALI-4 must also reconstruct each image's own digit: its error to its
  own image under 0.8 x its error to another test image (a shuffled
  pairing). At batch 32 and 920 steps seeds 1, 2, 3 and 123 (the default)
  read 0.60, 0.62, 0.63 and 0.49 x; with the generator-encoder objective's
  sign flipped, 0.998 x (0.0834 against 0.0836), which the bar against the
  untrained model alone lets through (0.0834 < 0.0856). ALI's ratio is
  printed, not asserted (0.80-0.92 x at 600 steps): its codes need not
  carry the digit at this budget. docs/quality.md follows the family to
  2,000 steps.
* The discriminator is in play: its mean accuracy (TensorBoard events) over
  the second half of training is at least 1/K + 0.05, and over the last
  quarter at most 0.95 (not certain). GALI-4 (K = 4) read 0.47-0.52 over
  the second half. One ALI run at batch 64 fell from 0.9 (step 100)
  through 0.61 (step 550) to exactly 0.5 at steps 900-920, where the
  instance noise has decayed to 0 and D outputs about 1/2 for every tuple
  (loss log 4): the game's equilibrium, not a discriminator that never
  learned.
"""

import numpy as np
import pytest
import tensorflow as tf

from age_tf import checkpointing
from age_tf import config as config_lib
from age_tf import data
from age_tf.methods import METHODS

from conftest import read_events, run_module

BATCH_SIZE = 32
STEPS = {"gali4": 920, "ali": 600}


@pytest.fixture(scope="module", params=["gali4", "ali"])
def gali_run(request, tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp(f"{request.param}_digits"))
  result = run_module("age_tf.train", f"--method={request.param}", "--dataset=digits",
                      f"--batch_size={BATCH_SIZE}", f"--train_steps={STEPS[request.param]}",
                      "--noexport",
                      f"--model_dir={model_dir}")
  assert result.returncode == 0, result.stderr[-5000:]
  return model_dir


def reconstruction_errors(model, images):
  """Per-image MSE in [0, 1] of G(E(x)) to x and to another test image."""
  recon = model.reconstruct(images).numpy()
  x = images.numpy()
  own = np.mean(((recon - x) / 2.0) ** 2)
  shuffled = np.mean(((recon - np.roll(x, 1, axis=0)) / 2.0) ** 2)
  return float(own), float(shuffled)


def test_reconstructions_are_of_their_own_inputs(gali_run):
  config, trained, _ = checkpointing.load_model(gali_run)
  untrained = METHODS[config.method].create(config)
  images = data.test_images(config_lib.dataset_spec(config), 300)
  own, shuffled = reconstruction_errors(trained, images)
  untrained_own, _ = reconstruction_errors(untrained, images)
  print(f"{config.method}: pixel MSE trained {own:.4f} (to another image {shuffled:.4f}), "
        f"untrained {untrained_own:.4f}")
  assert untrained_own > 0.1
  assert own < (0.6 if config.method == "gali4" else 1.0) * untrained_own
  if config.method == "gali4":
    assert own < 0.8 * shuffled


def test_discriminator_is_neither_at_chance_nor_certain(gali_run):
  config, model, step = checkpointing.load_model(gali_run)
  steps = STEPS[config.method]
  assert step == steps
  events = read_events(gali_run)
  accuracy = [(e.step, float(tf.make_ndarray(e.tensor_proto)))
              for e in events.Tensors("discriminator/accuracy")]
  second_half = [a for step, a in accuracy if step > 0.5 * steps]
  late = [a for step, a in accuracy if step > 0.75 * steps]
  chance = 1.0 / len(model.class_names)
  print(f"{config.method}: discriminator accuracy over the second half "
        f"{np.round(second_half, 3)}, chance {chance}")
  assert late and np.mean(second_half) >= chance + 0.05
  assert np.mean(late) <= 0.95
  tags = set(events.Tags()["tensors"])
  assert {"discriminator/loss", "generator_encoder/loss", "discriminator/noise_std",
          "discriminator/confusion", "images/samples", "images/reconstructions"} <= tags
  assert {f"discriminator/accuracy/{c}" for c in model.class_names} <= tags
