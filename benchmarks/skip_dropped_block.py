"""What skipping the dropped samples' branch saves in a whole block: a ViT MLP block
(LayerNorm, Linear, GELU, Linear) under stochastic depth, forward + backward, with
StochasticDepthBlock(skip_dropped=True) against the default (every sample's branch
computed, then dropped) and against timm's x + drop_path(mlp(x)).

    python benchmarks/skip_dropped_block.py [--batch 64] [--tokens 197] [--width 384] [--p 0.3]

Both fastdrop blocks draw the same decisions and give the same output bit for
bit (checked here too); the time saved is about the dropped fraction of the
branch's compute.
"""

import argparse
import statistics
import time

import torch

import fastdrop
from fastdrop.bench import peers


def mlp(width):
    return torch.nn.Sequential(
        torch.nn.LayerNorm(width),
        torch.nn.Linear(width, 4 * width),
        torch.nn.GELU(),
        torch.nn.Linear(4 * width, width),
    )


def median_ms(step, repeats):
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--p", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    branch = mlp(args.width)
    full = fastdrop.nn.StochasticDepthBlock(branch, args.p)
    skipping = fastdrop.nn.StochasticDepthBlock(branch, args.p, skip_dropped=True)
    x = torch.randn(args.batch, args.tokens, args.width, requires_grad=True)

    def run(block_call):
        def step():
            block_call(x).sum().backward()
            x.grad = None
            branch.zero_grad(set_to_none=True)

        return step

    torch.manual_seed(1)
    y_full = full(x)
    torch.manual_seed(1)
    assert torch.equal(skipping(x), y_full), "skip_dropped changed the output"
    candidates = {
        "fastdrop, skip_dropped=True": run(skipping),
        "fastdrop, every sample's branch": run(full),
        "timm: x + drop_path(mlp(x))": run(lambda t: t + peers.timm_drop_path(branch(t), args.p)),
    }
    print(
        f"MLP block ({args.batch}, {args.tokens}, {args.width}), p = {args.p}, forward + backward, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    results = {name: median_ms(step, args.repeats) for name, step in candidates.items()}
    base = results["fastdrop, every sample's branch"]
    for name, ms in results.items():
        print(f"  {name:34s} {ms:8.2f} ms  ({base / ms:.2f}x the full branch)")


if __name__ == "__main__":
    main()
