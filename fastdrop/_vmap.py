"""torch.vmap of every fastdrop operator, with torch's randomness semantics.

vmap calls a random operator once per level with the batched inputs; it is
for the operator to decide what the slices' masks are. As torch's dropouts do
(their rules live at the FuncTorchVmapMode key, which vmap enables for every
call inside it, batched inputs or not), with vmap's ``randomness``:

- ``"error"``: the forward operators raise torch's error;
- ``"same"``: every slice gets the mask an unbatched call would give it: the
  decision index of an element is its index within its slice, so the batch
  dim takes index stride 0;
- ``"different"``: the slices' masks are independent: the call is the call on
  the stacked tensor (an unbatched input is expanded to it, as torch does), the
  batch dim taking index stride span, the number of decision indices a slice
  uses. So vmap(f, randomness="different")(x) is f(x) on the whole batch.

Every forward runs as fastdrop::indexed_dropout with those index strides, one
kernel for the whole batch. The backward operators are not random: their rule
applies the mask the forward drew, which the batching of rng_state tells: a
forward with randomness "same" returns it unbatched, one with "different"
returns it broadcast over the batch (stride 0). So a backward whose rng_state
is batched uses the stacked call's indices. Nested vmaps compose level by level.

The fused residual forms are composed of indexed_dropout and torch ops under
vmap, rounded as the fused kernels round (bit for bit the same results).
"""

import torch
from torch._C._functorch import _add_batch_dim, _unwrap_batched, is_batchedtensor
from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

from . import _checks
from ._decisions import VARIANTS, _drop_path, check_samples, composed_drop_path_add, full_arguments, span

ops = torch.ops.fastdrop

RANDOMNESS_ERROR = (
    "vmap: called random operation while in randomness error mode. Please either use the 'same' or 'different' "
    "randomness flags on vmap or perform the randomness operation out of vmap"
)
INPLACE_DIFFERENT_ERROR = (
    "vmap: Cannot ask for different inplace randomness on an unbatched tensor. This will appear like same "
    "randomness. If this is necessary for your usage, please file an issue with functorch."
)

_VMAP_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchVmapMode) | torch._C.DispatchKeySet(
    torch._C.DispatchKey.FuncTorchBatched
)


class Level:
    """The vmap level a rule runs at: its batch size and randomness."""

    def __init__(self, interpreter):
        self.batch_size = interpreter.batch_size()
        self.randomness = interpreter.randomness()

    def check_random(self):
        if self.randomness == "error":
            raise RuntimeError(RANDOMNESS_ERROR)

    def different(self):
        return self.randomness == "different"


def batch_first(level, tensor, bdim):
    """The physical tensor with the vmap dim first; an unbatched one expanded to the batch."""
    if bdim is None:
        return tensor.expand(level.batch_size, *tensor.shape)
    return tensor.movedim(bdim, 0)


def aligned(tensor, bdim, rank):
    """A physical operand to broadcast against a batch-first tensor of logical rank `rank`."""
    if bdim is None:
        return tensor
    tensor = tensor.movedim(bdim, 0)
    return tensor.reshape(tensor.shape[0], *([1] * (rank - tensor.dim() + 1)), *tensor.shape[1:])


def logical(tensor, bdim):
    """A view with the shape, dtype and device one slice has (for argument checks)."""
    return tensor if bdim is None else tensor.select(bdim, 0)


def index_strides(level, shape, slice_strides, state_batched):
    lead = span(shape, slice_strides) if state_batched else 0
    return [lead, *slice_strides]


def returned_state(level, state):
    """rng_state as a forward returns it: broadcast over the batch for 'different', else unbatched."""
    if level.different():
        return state.expand(level.batch_size, *state.shape), 0
    return state, None


def one_state(state, bdim):
    """The rng_state of the stacked call a batched rng_state stands for."""
    state = state.movedim(bdim, 0)
    if state.shape[0] > 1 and state.stride(0) != 0:
        if is_batchedtensor(state) or not torch.equal(state, state[:1].expand_as(state)):
            raise RuntimeError(
                "fastdrop: under vmap, a batched rng_state must be the one state of a forward call with "
                "randomness='different' (the same for every slice); vmap over different rng_states is not supported"
            )
    return state[0]


def drawn(level, name, x, bdim, p, args, generator, inplace=False):
    """The variant operator `name` on x (batched at bdim, or, for randomness
    "different", not): the physical output (None in place), and rng_state with its bdim."""
    if bdim is None and inplace:
        raise RuntimeError(INPLACE_DIFFERENT_ERROR)
    x = batch_first(level, x, bdim)
    variant, slice_strides, base = VARIANTS[name](x.shape[1:], *args)
    strides = index_strides(level, x.shape[1:], slice_strides, level.different())
    if inplace:
        return None, *returned_state(level, ops.indexed_dropout_(x, p, variant, strides, base, generator))
    output, state = ops.indexed_dropout(x, p, variant, strides, base, generator)
    return output, *returned_state(level, state)


def forward_rule(name):
    def rule(level, args, bdims):
        x, p, *rest, generator = args
        output, state, state_dim = drawn(level, name, x, bdims[0], p, rest, generator)
        return (output, state), (0, state_dim)

    return rule


def inplace_rule(name):
    def rule(level, args, bdims):
        x, p, *rest, generator = args
        _, state, state_dim = drawn(level, name, x, bdims[0], p, rest, generator, inplace=True)
        return state, state_dim

    return rule


def backward_rule(name):
    def rule(level, args, bdims):
        grad, state, p, *rest = args
        grad_dim, state_dim = bdims
        if state_dim is not None:
            state = one_state(state, state_dim)
        grad = batch_first(level, grad, grad_dim)
        variant, slice_strides, base = VARIANTS[name](grad.shape[1:], *rest)
        strides = index_strides(level, grad.shape[1:], slice_strides, state_dim is not None)
        return ops.indexed_dropout_backward(grad, state, p, variant, strides, base), 0

    return rule


# The fused residual forms, composed. Operands are aligned for broadcasting
# against the batch-first result (unbatched ones broadcast over the batch).


def dropout_add_rule(level, args, bdims):
    residual, x, p, generator = args
    residual_dim, x_dim = bdims
    _checks.residual_operands(logical(residual, residual_dim), logical(x, x_dim), "input", "dropout_add")
    rank = x.dim() - (x_dim is not None)
    dropped, state, state_dim = drawn(level, "dropout", x, x_dim, p, [], generator)
    return (aligned(residual, residual_dim, rank) + dropped, state), (0, state_dim)


def bias_dropout_add_rule(level, args, bdims):
    x, bias, residual, p, generator = args
    x_dim, bias_dim, residual_dim = bdims
    _checks.residual_operands(logical(residual, residual_dim), logical(x, x_dim), "input", "bias_dropout_add")
    _checks.bias_operand(logical(x, x_dim), logical(bias, bias_dim), "bias_dropout_add")
    rank = x.dim() - (x_dim is not None)
    biased = aligned(x, x_dim, rank) + aligned(bias, bias_dim, rank)
    dropped, state, state_dim = drawn(level, "dropout", biased, 0 if biased.dim() > rank else None, p, [], generator)
    return (aligned(residual, residual_dim, rank) + dropped, state), (0, state_dim)


def drop_path_add_rule(level, args, bdims):
    residual, branch, p, scale_by_keep, generator = args
    residual_dim, branch_dim = bdims
    _checks.residual_operands(logical(residual, residual_dim), logical(branch, branch_dim), "branch", "drop_path_add")
    rank = branch.dim() - (branch_dim is not None)
    check_samples(logical(branch, branch_dim).shape)
    branch = batch_first(level, branch, branch_dim)
    variant, slice_strides, _ = _drop_path(branch.shape[1:], scale_by_keep)
    strides = index_strides(level, branch.shape[1:], slice_strides, level.different())
    residual = aligned(residual, residual_dim, rank)
    output, state = composed_drop_path_add(residual, branch, p, variant, strides, 0, generator)
    state, state_dim = returned_state(level, state)
    return (output, state), (0, state_dim)


def drop_path_add_subset_rule(level, args, bdims):
    """Not random: where the slices share their indices, the vmap dim moves behind
    the samples (dim 0 of every operand), one call for all slices; else a call per slice."""
    residual, branch, indices, p, scale_by_keep = args
    residual_dim, branch_dim, indices_dim = bdims
    if indices_dim is None:
        residual = batch_first(level, residual, residual_dim).movedim(0, 1)
        branch = batch_first(level, branch, branch_dim).movedim(0, 1)
        return ops.drop_path_add_subset(residual, branch, indices, p, scale_by_keep), 1
    slices = zip(*(batch_first(level, t, d) for t, d in zip((residual, branch, indices), bdims)))
    return torch.stack([ops.drop_path_add_subset(r, b, i, p, scale_by_keep) for r, b, i in slices]), 0


def drop_path_add_subset_backward_rule(level, args, bdims):
    """As drop_path_add_subset's rule: the vmap dim behind the samples where the slices share their indices."""
    grad, indices, p, scale_by_keep, dtype = args
    grad_dim, indices_dim = bdims
    if indices_dim is None:
        grad = batch_first(level, grad, grad_dim).movedim(0, 1)
        return ops.drop_path_add_subset_backward(grad, indices, p, scale_by_keep, dtype), 1
    slices = zip(batch_first(level, grad, grad_dim), batch_first(level, indices, indices_dim))
    return torch.stack([ops.drop_path_add_subset_backward(g, i, p, scale_by_keep, dtype) for g, i in slices]), 0


# DropBlock: one mask per slice of the stacked call ("different") or one for
# every slice ("same"); either way each slice is scaled by its own kept
# fraction, as an unbatched call scales it.


def _block_scaled(x, keep, share_channels, eps, scale):
    """x (batch first) times each slice's DropBlock mask `keep` (0/1 in x's dtype) and its
    scale, computed per slice from the mask planes as the operators compute it, and rounded
    in the order the operators round (the noise product first); and each slice's kept count."""
    mask = keep[:, :, :1] if share_channels else keep  # one mask plane per sample when its channels share one
    dims, numel = tuple(range(1, mask.dim())), mask[0].numel()
    kept = mask.sum(dims, dtype=torch.int64)
    if scale == "none":
        return x * keep, kept
    if scale == "input":
        factor = numel / (eps + mask.sum(dims))
    else:
        factor = (numel / mask.to(torch.float32).sum(dims).add(eps)).to(x.dtype)
    return (x * keep) * factor.view((-1,) + (1,) * (x.dim() - 1)), kept


def _stacked_ones(x):
    """Ones of the stacked call's shape for a batch-first x: (B * N, C, ...)."""
    return x.new_ones(()).expand(x.shape[0] * x.shape[1], *x.shape[2:])


def drop_block_rule(level, args, bdims):
    x, gamma, block_size, centred, share_channels, eps, scale, generator = args
    x = batch_first(level, x, bdims[0])
    if not level.different():  # one mask for every slice: x times the scaled mask (of ones)
        mask, state, kept = ops.drop_block(
            x.new_ones(()).expand(x.shape[1:]), gamma, block_size, centred, share_channels, eps, scale, generator
        )
        return (x * mask, state, kept), (0, None, None)
    keep, state, _ = ops.drop_block(
        _stacked_ones(x), gamma, block_size, centred, share_channels, eps, "none", generator
    )
    output, kept = _block_scaled(x, keep.view(x.shape), share_channels, eps, scale)
    state, state_dim = returned_state(level, state)
    return (output, state, kept), (0, state_dim, 0)


def drop_block_backward_rule(level, args, bdims):
    """Not random: the forward's masks, rebuilt from its rng_state, and each slice's scale."""
    grad, state, kept, gamma, block_size, centred, share_channels, eps, scale = args
    grad_dim, state_dim, kept_dim = bdims
    grad = batch_first(level, grad, grad_dim)
    if state_dim is None and kept_dim is None:  # a "same" forward: one scaled mask for every slice
        mask = ops.drop_block_backward(
            grad.new_ones(()).expand(grad.shape[1:]),
            state,
            kept,
            gamma,
            block_size,
            centred,
            share_channels,
            eps,
            scale,
        )
        return grad * mask, 0
    if state_dim is not None:
        state = one_state(state, state_dim)
    unscaled = torch.zeros((), dtype=torch.int64, device=grad.device)  # scale "none" reads no kept count
    keep = ops.drop_block_backward(
        _stacked_ones(grad), state, unscaled, gamma, block_size, centred, share_channels, eps, "none"
    ).view(grad.shape)
    return _block_scaled(grad, keep, share_channels, eps, scale)[0], 0


RULES = {
    **{name: forward_rule(name) for name in VARIANTS},
    **{name + "_": inplace_rule(name) for name in VARIANTS if name != "drop_path"},
    **{name + "_backward": backward_rule(name) for name in VARIANTS},
    "dropout_add": dropout_add_rule,
    "bias_dropout_add": bias_dropout_add_rule,
    "drop_path_add": drop_path_add_rule,
    "drop_path_add_subset": drop_path_add_subset_rule,
    "drop_path_add_subset_backward": drop_path_add_subset_backward_rule,
    "drop_block": drop_block_rule,
    "drop_block_backward": drop_block_backward_rule,
}


def _kernel(name, rule):
    op = getattr(ops, name).default
    random = torch.Tag.nondeterministic_seeded in op.tags

    def kernel(keyset, *args, **kwargs):
        interpreter = retrieve_current_functorch_interpreter()
        level, level_id = Level(interpreter), interpreter.level()
        values, bdims = [], []
        for value in full_arguments(op._schema, args, kwargs):
            if isinstance(value, torch.Tensor):
                value, bdim = _unwrap_batched(value, level_id)
                bdims.append(bdim)
            values.append(value)
        if random:
            level.check_random()
        with torch._C._ExcludeDispatchKeyGuard(_VMAP_KEYS):
            if all(bdim is None for bdim in bdims) and not (random and level.different()):
                return op(*values)  # nothing batched, and one mask for every slice (or none drawn): the plain call
            outputs, out_dims = rule(level, values, bdims)
        if isinstance(outputs, tuple):
            return tuple(o if d is None else _add_batch_dim(o, d, level_id) for o, d in zip(outputs, out_dims))
        return outputs if out_dims is None else _add_batch_dim(outputs, out_dims, level_id)

    return kernel


_library = torch.library.Library("fastdrop", "IMPL")
for _name, _rule in RULES.items():
    _library.impl(_name, _kernel(_name, _rule), "FuncTorchVmapMode", with_keyset=True)
    # Batched inputs reach the same rule (the for-loop fallback would draw per slice).
    _library.impl(_name, torch.library.fallthrough_kernel, "FuncTorchBatched")
