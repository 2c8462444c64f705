"""Every CUDA kernel of fastdrop once, on small inputs in the layouts that pick
each kernel (contiguous, misaligned, strided, channels_last, rows and
channels of whole packs, tails), for compute-sanitizer memcheck
(benchmarks/gpu_check.sh). Prints one line per call."""

import torch

import fastdrop  # noqa: F401  (loads the operators)

ops = torch.ops.fastdrop
device = "cuda"


def layouts(dtype):
    base = torch.randn(4, 16, 6, 8, dtype=dtype, device=device)
    return {
        "contiguous": base,
        "tail": torch.randn(1001, dtype=dtype, device=device),
        "misaligned": torch.randn(1001, dtype=dtype, device=device)[1:],
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "permuted": base.permute(0, 3, 1, 2),
        "sliced": base[:, :, ::2, 1:],
        "rows_not_whole_packs": torch.randn(3, 5, 7, 3, dtype=dtype, device=device),
        "empty": torch.empty(0, 4, dtype=dtype, device=device),
    }


def main():
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for label, x in layouts(dtype).items():
            grad = torch.randn_like(x)
            calls = {}
            for name in ("dropout", "alpha_dropout"):
                calls[name] = lambda name=name: getattr(ops, name)(x, 0.3)
                calls[name + "_"] = lambda name=name: getattr(ops, name + "_")(x.clone(), 0.3)
            if x.dim() >= 2:
                for name in ("feature_dropout", "feature_alpha_dropout"):
                    calls[name] = lambda name=name: getattr(ops, name)(x, 0.3)
                calls["drop_path"] = lambda: ops.drop_path(x, 0.3)
                calls["drop_path_batch"] = lambda: ops.drop_path(x, 0.3, True, False)
                calls["drop_path_add"] = lambda: ops.drop_path_add(x, x.clone(), 0.3)
                calls["bias_dropout_add"] = lambda: ops.bias_dropout_add(
                    x, torch.randn(x.shape[-1], dtype=dtype, device=device), x, 0.3
                )
                calls.update(per_sample_calls(x, grad))
            calls["dropout_add"] = lambda: ops.dropout_add(x, x.clone(), 0.3)
            if dtype != torch.float64:
                calls["dropout_add_wider_residual"] = lambda: ops.dropout_add(x.float().double(), x, 0.3)
            strides = [1] * x.dim()
            calls["indexed_dropout"] = lambda: ops.indexed_dropout(x, 0.3, "dropout", strides, 5)
            for name, call in calls.items():
                result = call()
                state = result[1] if isinstance(result, tuple) else result
                if name in ("dropout", "alpha_dropout", "feature_dropout", "feature_alpha_dropout"):
                    getattr(ops, name + "_backward")(grad, state, 0.3)
                if name == "indexed_dropout":
                    ops.indexed_dropout_backward(grad, state, 0.3, "dropout", strides, 5)
                if name == "drop_path":
                    ops.drop_path_backward(grad, state, 0.3)
                torch.cuda.synchronize()
                print(f"ran {name} {dtype} {label}")


def per_sample_calls(x, grad):
    """The kernels that take a leading sample dim: the kept-subset epilogue and DropBlock."""
    calls = {}
    indices = torch.arange(0, x.shape[0], 2, device=device)
    branch_kept = torch.randn(len(indices), *x.shape[1:], dtype=x.dtype, device=device)

    def subset():
        ops.drop_path_add_subset(x, branch_kept, indices, 0.3)
        ops.drop_path_add_subset_backward(grad, indices, 0.3, True, x.dtype)

    calls["drop_path_add_subset"] = subset
    if x.dim() in (3, 4, 5):
        block = [3] * (x.dim() - 2)
        for centred in (False, True):
            for share in (False, True):

                def block_call(centred=centred, share=share):
                    out, state, kept = ops.drop_block(x, 0.2, block, centred, share)
                    ops.drop_block_backward(grad, state, kept, 0.2, block, centred, share)

                calls[f"drop_block_centred{int(centred)}_shared{int(share)}"] = block_call
    return calls


if __name__ == "__main__":
    main()
