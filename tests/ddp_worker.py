"""One rank of the DDP test (tests/test_training.py), run in its own process."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import fastdrop


def build_model():
    torch.manual_seed(0)  # the same initial weights in every process
    # Dropout straight after a Linear: its input has no zeros, so output != 0 is the mask.
    return torch.nn.Sequential(
        torch.nn.Linear(16, 64), fastdrop.nn.Dropout(0.5), torch.nn.ReLU(), torch.nn.Linear(64, 4)
    )


def shard(rank):
    generator = torch.Generator().manual_seed(1000 + rank)
    return torch.randn(32, 16, generator=generator), torch.randint(0, 4, (32,), generator=generator)


def run(rank, world_size, init_file, seed_sets, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        out = {}
        for name, seeds in seed_sets.items():
            model = build_model()
            ddp = DistributedDataParallel(model)
            masks = []
            handle = model[1].register_forward_hook(lambda module, inputs, output: masks.append(output != 0))
            torch.manual_seed(seeds[rank])
            x, y = shard(rank)
            F.cross_entropy(ddp(x), y).backward()
            handle.remove()
            out[name] = {"mask": masks[0], "grads": [p.grad.clone() for p in model.parameters()]}
        torch.save(out, f"{results}.rank{rank}")
        # Both ranks done before either tears its pairs down: once in a full run on the 2-core
        # machine, rank 0 aborted in teardown ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()
