"""Times the authors' PyTorch AGE (CIFAR-10) and GALI-4 (SVHN) iterations: the baselines to beat.

    python -m venv /tmp/torch && /tmp/torch/bin/pip install torch==2.13.0 numpy   # 2.13.0: a CPU build
    /tmp/torch/bin/python benchmarks/pytorch_reference.py            # AGE: 2 threads, 5 runs of 5
    /tmp/torch/bin/python benchmarks/pytorch_reference.py --method=gali4
    /tmp/torch/bin/python benchmarks/pytorch_reference.py --method=gali4 --precision=bfloat16
    /tmp/torch/bin/python benchmarks/pytorch_reference.py --method=gali4 --channels_last

Not part of age_tf (which needs no PyTorch): faithful re-statements of the
authors' iterations, so the TensorFlow step (benchmarks/throughput.py) can be
compared with them in the same session on the same machine. Inputs are a
fixed random batch (the cost does not depend on pixel values); data loading,
logging and checkpoints are not timed.

--method=age (the default): DmitryUlyanov/AGE's train.py with its dcgan32
networks. The networks' parameter counts are checked against the authors'
models' counts (encoder 1,183,616; generator 3,934,595). One iteration: one
encoder update (KL(e(x)) - KL(e(g(z))) + 10 L1(x, g(e(x))), g(z) detached)
and two generator updates (KL(e(g(z))) + 1000 (2 - mean(z e(g(z))))),
Adam(2e-4, (0.5, 0.999)), batch 64, 32x32x3, M = 128, codes and z on the
unit sphere. Against throughput.py --dataset=cifar10.

--method=gali4: yatindandi/Generalized-Adversarially-Learned-Inference's
train/SVHN/GALI_4_train_SVHN.py with its networks
(model/SVHN/model_disc_4_SN_bat_linear_tanh.py): batch 100, 32x32x3, latent
256, z ~ N(0, I), a stochastic encoder (mu + exp(log sigma) eps), a generator
with a per-pixel output bias, and a discriminator over (x, z) with four
logits, spectrally normalised (torch.nn.utils.spectral_norm, one power
iteration per call), called once per class: (x, E(x)), (x, E(G(E(x)))),
(G(z), z), (G(E(G(z))), z), each image with fresh instance noise (std 0.099,
the first epoch of 100). Their losses (D: cross-entropy of each class against
its label; G-E: against every other label), both from one forward pass,
both applied: Adam(2e-4, (0.5, 0.999)) for D and for E and G together. The
parameter counts are checked against age_tf's own networks
(age_tf/networks/ali.py at 32x32x3, latent 256, width 32). Against
throughput.py --method=gali4 --dataset=svhn.

The authors' code steps D between its two backward passes
(loss_d.backward(retain_graph=True); optimizerD.step(); loss_g.backward()),
which current PyTorch refuses (the second pass needs D's weights the step
changed in place; torch 2.13 raises "modified by an inplace operation", where
PyTorch of their time presumably did not check). Here both backward passes run first, then both steps;
the work is theirs: --backward=full (the default) runs both passes over
every parameter, as their two .backward() calls do (D's gradients kept from
the first, E's and G's from the second). --backward=pruned takes each loss's
gradient only for its own networks' parameters (D's loss: D's weights only;
the G-E loss: through D into E and G, without D's weight gradients), the
work age_tf's step does: the same update, less computation.

--precision=bfloat16 runs the forward passes under
torch.autocast("cpu", dtype=torch.bfloat16) (parameters, gradients and Adam
in float32, as Keras's mixed_bfloat16 policy); --channels_last puts the
networks and images in NHWC memory format. Both apply to either method.
"""

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

# ----------------------------------------------------------------------------- AGE


def encoder(latent_dim=128, width=64, channels=3):
  return nn.Sequential(
      nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
      nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
      nn.LeakyReLU(0.2, inplace=True),
      nn.Conv2d(width * 2, width * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 4),
      nn.LeakyReLU(0.2, inplace=True),
      nn.Conv2d(width * 4, latent_dim, 4, 2, 1, bias=True), nn.AvgPool2d(2), nn.Flatten())


def generator(latent_dim=128, width=64, channels=3):
  return nn.Sequential(
      nn.Unflatten(1, (latent_dim, 1, 1)),
      nn.ConvTranspose2d(latent_dim, width * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(width * 8),
      nn.ReLU(True),
      nn.ConvTranspose2d(width * 8, width * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 4),
      nn.ReLU(True),
      nn.ConvTranspose2d(width * 4, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
      nn.ReLU(True),
      nn.ConvTranspose2d(width * 2, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
      nn.ReLU(True),
      nn.Conv2d(width * 2, channels, 1, 1, 0, bias=True), nn.Tanh())


def sphere(v):
  return v / v.norm(dim=1, keepdim=True)


def kl(codes):
  """The authors' estimator: mean_j[(v_j^2 + m_j^2) / 2 - log v_j - 1/2]."""
  codes = codes.float()
  mean = codes.mean(0)
  var = codes.var(0, unbiased=False)
  return ((var ** 2 + mean ** 2) / 2 - var.log() - 0.5).mean()


def age_iteration(args, autocast, memory_format):
  """The authors' AGE CIFAR-10 iteration: (iteration, description, images per iteration)."""
  e, g = encoder(), generator()
  counts = [sum(p.numel() for p in net.parameters()) for net in (e, g)]
  assert counts == [1183616, 3934595], counts
  e, g = e.to(memory_format=memory_format), g.to(memory_format=memory_format)
  opt_e = torch.optim.Adam(e.parameters(), 2e-4, betas=(0.5, 0.999))
  opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
  x = (torch.rand(64, 3, 32, 32) * 2 - 1).contiguous(memory_format=memory_format)

  def iteration():
    z = sphere(torch.randn(64, 128))
    with autocast():
      fake = g(z).detach()
    opt_e.zero_grad()
    with autocast():
      real_codes = sphere(e(x))
      loss = kl(real_codes) - kl(sphere(e(fake))) + 10 * (g(real_codes) - x).abs().mean()
    loss.backward()
    opt_e.step()
    for _ in range(2):
      z = sphere(torch.randn(64, 128))
      opt_g.zero_grad()
      with autocast():
        codes = sphere(e(g(z)))
        loss = kl(codes) + 1000 * (2 - (z * codes).mean())
      loss.backward()
      opt_g.step()
    return float(loss)

  return iteration, "authors' AGE CIFAR-10 iteration", 64

# ----------------------------------------------------------------------------- GALI-4

GALI_BATCH = 100
GALI_LATENT = 256
GALI_EPOCHS = 100
# Trainable parameters of age_tf's SVHN networks (age_tf/networks/ali.py:
# build_encoder(32, 3, 256, stochastic=True, width=32), build_generator(32, 3,
# 256, width=32), build_discriminator(32, 3, 256, signature=("x", "z"),
# num_logits=4, width=32)). Recompute with age_tf's Python, from the repository root:
#   python -c "import numpy as np; from age_tf.networks import ali; \
#   print([int(sum(np.prod(w.shape) for w in n.trainable_weights)) for n in ( \
#   ali.build_encoder(32, 3, 256, stochastic=True, width=32), \
#   ali.build_generator(32, 3, 256, width=32), \
#   ali.build_discriminator(32, 3, 256, signature=('x', 'z'), num_logits=4, width=32))])"
# PyTorch's BatchNorm running statistics and spectral norm's u and v vectors
# are buffers, not parameters, as Keras's moving statistics and u are
# non-trainable weights, so both sides count the same things.
AGE_TF_GALI_COUNTS = [3315488, 1767584, 5286212]


class GaliEncoder(nn.Module):
  """x (B, 3, 32, 32) -> (B, 2M) = [mu, log sigma].

  conv 5/1 (32) - 4/2 (64) - 4/1 (128) - 4/2 (256) - 4/1 (512), BatchNorm and
  LeakyReLU(0.01) after each, no biases; linear 512 (BatchNorm, LeakyReLU) -
  linear 2M with a bias.
  """

  def __init__(self, latent_dim=GALI_LATENT):
    super().__init__()
    layers, channels = [], 3
    for filters, kernel, stride in [(32, 5, 1), (64, 4, 2), (128, 4, 1), (256, 4, 2),
                                    (512, 4, 1)]:
      layers += [nn.Conv2d(channels, filters, kernel, stride, bias=False),
                 nn.BatchNorm2d(filters), nn.LeakyReLU(inplace=True)]
      channels = filters
    self.convs = nn.Sequential(*layers)
    self.dense = nn.Sequential(
        nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.LeakyReLU(inplace=True),
        nn.Linear(512, 2 * latent_dim))

  def forward(self, x):
    return self.dense(self.convs(x).view(x.shape[0], -1))


class GaliGenerator(nn.Module):
  """z (B, M, 1, 1) -> tanh(h + b), b a per-pixel bias.

  convT 4/1 (256) - 4/2 (128) - 4/1 (64) - 4/2 (32) - 5/1 (32) - conv 1x1
  (32) - 1x1 (3), no padding, no biases; BatchNorm and LeakyReLU(0.01) after
  all but the last.
  """

  def __init__(self, latent_dim=GALI_LATENT):
    super().__init__()
    self.output_bias = nn.Parameter(torch.zeros(3, 32, 32))
    layers, channels = [], latent_dim
    for filters, kernel, stride in [(256, 4, 1), (128, 4, 2), (64, 4, 1), (32, 4, 2),
                                    (32, 5, 1)]:
      layers += [nn.ConvTranspose2d(channels, filters, kernel, stride, bias=False),
                 nn.BatchNorm2d(filters), nn.LeakyReLU(inplace=True)]
      channels = filters
    layers += [nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32), nn.LeakyReLU(inplace=True),
               nn.Conv2d(32, 3, 1, bias=False)]
    self.main = nn.Sequential(*layers)

  def forward(self, z):
    return torch.tanh(self.main(z) + self.output_bias)


class GaliDiscriminator(nn.Module):
  """D(x, z) -> 4 logits.

  D(x): the encoder's convolutions with biases; D(z): linear 512 - 512; joint:
  1024 - 1024 - 4; LeakyReLU(0.01) after all but the last. Spectral norm is
  applied to every layer by the caller; no BatchNorm, no dropout.
  """

  def __init__(self, latent_dim=GALI_LATENT, classes=4):
    super().__init__()
    layers, channels = [], 3
    for filters, kernel, stride in [(32, 5, 1), (64, 4, 2), (128, 4, 1), (256, 4, 2),
                                    (512, 4, 1)]:
      layers += [nn.Conv2d(channels, filters, kernel, stride), nn.LeakyReLU(inplace=True)]
      channels = filters
    self.infer_x = nn.Sequential(*layers)
    self.infer_z = nn.Sequential(nn.Linear(latent_dim, 512), nn.LeakyReLU(inplace=True),
                                 nn.Linear(512, 512), nn.LeakyReLU(inplace=True))
    self.infer_joint = nn.Sequential(nn.Linear(1024, 1024), nn.LeakyReLU(inplace=True),
                                     nn.Linear(1024, 1024), nn.LeakyReLU(inplace=True))
    self.final = nn.Linear(1024, classes)

  def forward(self, x, z):
    batch = x.shape[0]
    features = torch.cat([self.infer_x(x).view(batch, -1), self.infer_z(z.view(batch, -1))], 1)
    return self.final(self.infer_joint(features))


def gali_init(module):
  """The authors' weights_init: N(0, 0.01) weights, zero biases, BatchNorm (1, 0)."""
  if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
    module.weight.data.normal_(0.0, 0.01)
    if module.bias is not None:
      module.bias.data.zero_()
  elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
    module.weight.data.fill_(1)
    module.bias.data.zero_()


def gali4_iteration(args, autocast, memory_format):
  """The authors' GALI-4 SVHN iteration: (iteration, description, images per iteration)."""
  batch, latent = GALI_BATCH, GALI_LATENT
  e, g, d = GaliEncoder(), GaliGenerator(), GaliDiscriminator()
  for net in (e, g, d):
    net.apply(gali_init)
  for module in d.modules():
    if isinstance(module, (nn.Conv2d, nn.Linear)):
      nn.utils.spectral_norm(module)  # weight -> weight_orig (a parameter) / sigma
  counts = [sum(p.numel() for p in net.parameters()) for net in (e, g, d)]
  assert counts == AGE_TF_GALI_COUNTS, (counts, AGE_TF_GALI_COUNTS)
  e, g, d = (net.to(memory_format=memory_format) for net in (e, g, d))
  e_g_params, d_params = list(e.parameters()) + list(g.parameters()), list(d.parameters())
  opt_g = torch.optim.Adam([{"params": e.parameters()}, {"params": g.parameters()}], 2e-4,
                           betas=(0.5, 0.999))
  opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
  x = (torch.rand(batch, 3, 32, 32) * 2 - 1).contiguous(memory_format=memory_format)
  noise_std = 0.1 * (GALI_EPOCHS - 1) / GALI_EPOCHS  # epoch 1 of 100
  labels = [torch.full((batch,), label, dtype=torch.long) for label in range(4)]

  def noisy(images):
    return images + torch.randn_like(images) * noise_std

  def sample(codes):  # mu + sigma eps, as (B, M, 1, 1)
    mu, log_sigma = codes[:, :latent], codes[:, latent:]
    return (mu + torch.exp(log_sigma) * torch.randn(batch, latent)).view(batch, latent, 1, 1)

  def iteration():
    with autocast():
      z = torch.randn(batch, latent, 1, 1)
      fake = g(z)
      z_real = sample(e(x))
      out_real = d(noisy(x), z_real)                      # (x, E(x))
      out_real2 = d(noisy(x), sample(e(g(z_real))))       # (x, E(G(E(x))))
      out_fake = d(noisy(fake), z)                        # (G(z), z)
      out_fake2 = d(noisy(g(sample(e(fake)))), z)         # (G(E(G(z))), z)
      outputs = [o.float() for o in (out_real, out_real2, out_fake, out_fake2)]

      def ce(i, label):  # cross-entropy of class i's logits against `label`
        return F.cross_entropy(outputs[i], labels[label])

      loss_d = 0.5 * ce(0, 0) + ce(1, 1) + ce(2, 2) + ce(3, 3)
      # Their expression, 1/6 on its first term only.
      loss_g = (1 / 6) * ce(0, 1) + ce(0, 2) + ce(0, 3) + ce(1, 0) + ce(1, 2) + ce(1, 3) + (
          ce(2, 0) + ce(2, 1) + ce(2, 3) + ce(3, 0) + ce(3, 1) + ce(3, 2))
    opt_d.zero_grad()
    opt_g.zero_grad()
    if args.backward == "full":
      loss_d.backward(retain_graph=True)  # every parameter, as their loss_d.backward()
      d_grads = [p.grad for p in d_params]
      opt_g.zero_grad()
      for p in d_params:
        p.grad = None
      loss_g.backward()                   # every parameter again, as their loss_g.backward()
      for p, grad in zip(d_params, d_grads):
        p.grad = grad
    else:
      loss_d.backward(retain_graph=True, inputs=d_params)
      loss_g.backward(inputs=e_g_params)
    opt_d.step()
    opt_g.step()
    return float(loss_g.detach())

  description = f"authors' GALI-4 SVHN iteration ({args.backward} backward)"
  return iteration, description, batch


METHODS = {"age": age_iteration, "gali4": gali4_iteration}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--method", choices=sorted(METHODS), default="age",
                      help="age: the authors' AGE CIFAR-10 iteration; gali4: the GALI "
                      "authors' GALI-4 SVHN iteration.")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                      help="bfloat16: forward passes under torch.autocast('cpu', "
                      "dtype=torch.bfloat16).")
  parser.add_argument("--channels_last", action="store_true",
                      help="Networks and images in channels_last (NHWC) memory format.")
  parser.add_argument("--backward", choices=("full", "pruned"), default="full",
                      help="gali4: full = the authors' two backward passes over every "
                      "parameter; pruned = each loss only to its own networks' parameters.")
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)

  def autocast():
    if args.precision == "bfloat16":
      return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()

  memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
  iteration, description, images = METHODS[args.method](args, autocast, memory_format)
  for _ in range(2):
    iteration()
  seconds = []
  for _ in range(args.repeats):
    began = time.perf_counter()
    for _ in range(args.steps):
      iteration()
    seconds.append((time.perf_counter() - began) / args.steps)
  median = statistics.median(seconds)
  options = [o for o, on in (("bfloat16 autocast", args.precision == "bfloat16"),
                             ("channels_last", args.channels_last)) if on]
  rate = "" if args.method == "age" else f", {images / median:.0f} images/s"
  print(f"torch {torch.__version__}, {args.threads} threads: {description}"
        f"{' [' + ', '.join(options) + ']' if options else ''} "
        f"median {median:.3f} s (range {min(seconds):.3f}-{max(seconds):.3f},"
        f" {args.repeats} runs of {args.steps}){rate}")


if __name__ == "__main__":
  main()
