"""Performance measurements (timing and memory), kept apart from the benchmark's tables.

  harness.py          `python -m benchmark.perf`: the LSA step vs the diffusion step (full U-Net and
                      LoRA, with a sweep of speed/memory switches), generation and evaluation
  step.py             `python -m benchmark.perf.step`: the two training steps of one adapter
  decoder_profile.py  a torch.profiler table of the temporal decoder's backward pass (--profile-decoder)
  metrics.py          `python -m benchmark.perf.metrics`: the Frechet distance and each metric's frames/s
  optim_check.py      `python -m benchmark.perf.optim_check`: does an optimizer variant change the loss curves
  gpu.sh, wheels.sh   the paper-scale runs on one GPU and the wheels they need (docs/perf.md)

Nothing in trainers/, data/ or metrics/ imports this package: it reaches into them, not back.
"""
