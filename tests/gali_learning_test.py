"""ALI and GALI-4 learn on digits: reconstructions better than untrained, D in play.

Each run is `python -m age_tf.train --method=M --dataset=digits` with the
digits defaults but for the budget, which the test sets itself (the
family's digits default is 87 epochs): 40 epochs, 920 steps (about 75 s
for ALI and 3 min for GALI-4 on a 2-core CPU). The instance noise decays
over the run's own length. Half the budget is too little to assert the
same with room: runs of 460 steps (seeds 1-3) put GALI-4's error at 0.45,
0.54 and 0.44 x the untrained model's (required: below 0.6) and ALI's
discriminator at 0.93 over the last quarter (seed 1; required: at most
0.95). Thresholds, on the 300 test images in [0, 1]:

* The untrained model (the same seed's weights before training) scores a
  pixel MSE of 0.143 (its generator paints flat grey). At the digits rate
  2e-4, GALI-4 runs of 1,000 steps scored 0.044 and 0.052 (0.087 and 0.077
  to another image; docs/datasets.md). At the earlier rate 5e-4, runs scored
  0.065-0.066, and with the fused BatchNorm 0.064 (sub-pixel layers; 0.086
  to another image) and 0.071 (native; 0.092): required below 0.6 x the
  untrained model's. (On an AVX2 CPU before the fused BatchNorm, runs read
  0.085 native and 0.098 sub-pixel: at this budget GALI-4 can land near
  the bar.) ALI runs scored 0.066-0.069 and, once (a CI run), 0.106 with
  0.101 to another image: at this budget ALI's generator draws digits but
  its codes need not carry the input's digit (ALI's known weakness that GALI's extra
  classes address; see the README's digits section), and a sharp wrong
  digit scores about 0.10. Required of ALI: below the untrained model's.
* The test also prints the MSE to another test image (a shuffled pairing).
  At this budget it is not asserted: one GALI-4 run scored 0.065 against
  0.094 (reconstructions of their own digit), a rerun 0.066 against 0.064.
  docs/quality.md follows the family to 2,000 steps, where GALI-4's own
  error is under half the shuffled one.
* The discriminator is in play: its mean accuracy (TensorBoard events) over
  the second half of training is at least 1/K + 0.05, and over the last
  quarter at most 0.95 (not certain). Over the last quarter earlier runs
  read 0.59-0.63 (ALI, K = 2) and 0.34-0.40 (GALI-4, K = 4); one ALI run
  fell from 0.9 (step 100) through 0.61 (step 550) to exactly 0.5 at steps
  900-920, where the instance noise has decayed to 0 and D outputs about
  1/2 for every tuple (loss log 4): the game's equilibrium, not a discriminator that never
  learned. Its second-half mean was 0.58.
"""

import numpy as np
import pytest
import tensorflow as tf

from age_tf import checkpointing
from age_tf import config as config_lib
from age_tf import data
from age_tf.methods import METHODS

from conftest import read_events, run_module

GALI_STEPS = 920  # 40 epochs of 23 steps (the family's digits default is 87 epochs)


@pytest.fixture(scope="module", params=["gali4", "ali"])
def gali_run(request, tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp(f"{request.param}_digits"))
  result = run_module("age_tf.train", f"--method={request.param}", "--dataset=digits",
                      f"--train_steps={GALI_STEPS}", "--noexport",
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


def test_discriminator_is_neither_at_chance_nor_certain(gali_run):
  config, model, step = checkpointing.load_model(gali_run)
  assert step == GALI_STEPS
  events = read_events(gali_run)
  accuracy = [(e.step, float(tf.make_ndarray(e.tensor_proto)))
              for e in events.Tensors("discriminator/accuracy")]
  second_half = [a for step, a in accuracy if step > 0.5 * GALI_STEPS]
  late = [a for step, a in accuracy if step > 0.75 * GALI_STEPS]
  chance = 1.0 / len(model.class_names)
  print(f"{config.method}: discriminator accuracy over the second half "
        f"{np.round(second_half, 3)}, chance {chance}")
  assert late and np.mean(second_half) >= chance + 0.05
  assert np.mean(late) <= 0.95
  tags = set(events.Tags()["tensors"])
  assert {"discriminator/loss", "generator_encoder/loss", "discriminator/noise_std",
          "discriminator/confusion", "images/samples", "images/reconstructions"} <= tags
  assert {f"discriminator/accuracy/{c}" for c in model.class_names} <= tags
