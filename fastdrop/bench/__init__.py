"""fastdrop's benchmark against torch's native ops and the compositions users
write (python -m fastdrop.bench; benchmarks/README.md explains each count).

cases: what is timed; peers: the torch, timm and torchvision code it is timed
against; measure and timing: how; targets: the same-run ratios the benchmark
checks; host_overhead: the per-call cost; run: the command line; plots.
"""
