"""Times the authors' PyTorch AGE iteration (CIFAR-10 setting) on this machine: the baseline to beat.

    python -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy
    /tmp/torch/bin/python benchmarks/pytorch_reference.py            # 2 threads, 5 runs of 5

Not part of age_tf (which needs no PyTorch): a faithful re-statement of the
iteration in DmitryUlyanov/AGE's train.py with its dcgan32 networks, so the
TensorFlow step (benchmarks/throughput.py --dataset=cifar10) can be compared
with it in the same session on the same machine. The networks' parameter
counts are checked against the authors' models' counts
(encoder 1,183,616; generator 3,934,595). One iteration: one encoder update
(KL(e(x)) - KL(e(g(z))) + 10 L1(x, g(e(x))), g(z) detached) and two generator
updates (KL(e(g(z))) + 1000 (2 - mean(z e(g(z))))), Adam(2e-4, (0.5, 0.999)),
batch 64, 32x32x3, M = 128, codes and z on the unit sphere. Inputs are a fixed
random batch (the cost does not depend on pixel values).
"""

import argparse
import statistics
import time

import torch
from torch import nn


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
  mean = codes.mean(0)
  var = codes.var(0, unbiased=False)
  return ((var ** 2 + mean ** 2) / 2 - var.log() - 0.5).mean()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  e, g = encoder(), generator()
  counts = [sum(p.numel() for p in net.parameters()) for net in (e, g)]
  assert counts == [1183616, 3934595], counts
  opt_e = torch.optim.Adam(e.parameters(), 2e-4, betas=(0.5, 0.999))
  opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
  x = torch.rand(64, 3, 32, 32) * 2 - 1

  def iteration():
    z = sphere(torch.randn(64, 128))
    fake = g(z).detach()
    opt_e.zero_grad()
    real_codes = sphere(e(x))
    loss = kl(real_codes) - kl(sphere(e(fake))) + 10 * (g(real_codes) - x).abs().mean()
    loss.backward()
    opt_e.step()
    for _ in range(2):
      z = sphere(torch.randn(64, 128))
      opt_g.zero_grad()
      codes = sphere(e(g(z)))
      loss = kl(codes) + 1000 * (2 - (z * codes).mean())
      loss.backward()
      opt_g.step()
    return float(loss)

  for _ in range(2):
    iteration()
  seconds = []
  for _ in range(args.repeats):
    began = time.perf_counter()
    for _ in range(args.steps):
      iteration()
    seconds.append((time.perf_counter() - began) / args.steps)
  print(f"torch {torch.__version__}, {args.threads} threads: authors' AGE CIFAR-10 iteration "
        f"median {statistics.median(seconds):.3f} s (range {min(seconds):.3f}-{max(seconds):.3f},"
        f" {args.repeats} runs of {args.steps})")


if __name__ == "__main__":
  main()
