// Autograd for every fastdrop operator, registered in C++ so that a call costs
// no Python: a forward records one node that keeps the 16-byte rng_state, and
// its backward applies the same mask to the gradient through the *_backward
// operators (which are linear in the gradient, so they are their own
// derivatives: double backward works). Forward-mode AD applies that mask to
// tangents. The in-place forms check and rebase history as torch's in-place
// ops do, and bump the version counter (ADInplaceOrView), so a tensor saved by
// another op and then dropped in place is caught in backward.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace fastdrop {
namespace {

using at::Tensor;
using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// Older torch (2.11 among them) holds autograd nodes by std::shared_ptr, newer
// torch by c10::intrusive_ptr; Edge::function names whichever this one uses.
constexpr bool kSharedNodes = std::is_same_v<decltype(torch::autograd::Edge::function), std::shared_ptr<Node>>;
template <typename T>
using NodePtr = std::conditional_t<kSharedNodes, std::shared_ptr<T>, c10::intrusive_ptr<T>>;

template <typename T, typename... Args>
NodePtr<T> make_node(Args&&... args) {
  if constexpr (kSharedNodes) {
    return std::make_shared<T>(std::forward<Args>(args)...);
  } else {
    return c10::make_intrusive<T>(std::forward<Args>(args)...);
  }
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> operator_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using ForwardSignature = std::tuple<Tensor, Tensor>(const Tensor&, double, std::optional<at::Generator>);
using InplaceSignature = Tensor(Tensor&, double, std::optional<at::Generator>);
using BackwardSignature = Tensor(const Tensor&, const Tensor&, double);
using DropPathSignature = std::tuple<Tensor, Tensor>(const Tensor&, double, bool, bool, std::optional<at::Generator>);
using DropPathBackwardSignature = Tensor(const Tensor&, const Tensor&, double, bool, bool);
using IndexedSignature = std::tuple<Tensor, Tensor>(const Tensor&, double, c10::string_view, c10::SymIntArrayRef,
                                                    c10::SymInt, std::optional<at::Generator>);
using IndexedInplaceSignature = Tensor(Tensor&, double, c10::string_view, c10::SymIntArrayRef, c10::SymInt,
                                       std::optional<at::Generator>);
using IndexedBackwardSignature = Tensor(const Tensor&, const Tensor&, double, c10::string_view, c10::SymIntArrayRef,
                                        c10::SymInt);

// Which mask a forward drew: its operator family, with what its backward operator needs.
enum class Family { kDropout, kAlphaDropout, kFeatureDropout, kFeatureAlphaDropout, kDropPath, kIndexed };

struct FamilyNames {
  const char* forward;
  const char* inplace;
  const char* backward;
  const char* node;
};

constexpr FamilyNames kFamilyNames[] = {
    {"fastdrop::dropout", "fastdrop::dropout_", "fastdrop::dropout_backward", "FastdropDropoutBackward"},
    {"fastdrop::alpha_dropout", "fastdrop::alpha_dropout_", "fastdrop::alpha_dropout_backward",
     "FastdropAlphaDropoutBackward"},
    {"fastdrop::feature_dropout", "fastdrop::feature_dropout_", "fastdrop::feature_dropout_backward",
     "FastdropFeatureDropoutBackward"},
    {"fastdrop::feature_alpha_dropout", "fastdrop::feature_alpha_dropout_", "fastdrop::feature_alpha_dropout_backward",
     "FastdropFeatureAlphaDropoutBackward"},
    {"fastdrop::drop_path", nullptr, "fastdrop::drop_path_backward", "FastdropDropPathBackward"},
    {"fastdrop::indexed_dropout", "fastdrop::indexed_dropout_", "fastdrop::indexed_dropout_backward",
     "FastdropIndexedDropoutBackward"},
};

const FamilyNames& names_of(Family family) { return kFamilyNames[static_cast<int>(family)]; }

struct Mask {
  Family family;
  double p;
  bool scale_by_keep = true;  // drop path
  bool per_sample = true;
  std::string variant;  // indexed_dropout
  std::vector<c10::SymInt> index_strides;
  c10::SymInt index_base;

  // The forward's mask and scale applied to `tensor` (a gradient or a tangent).
  Tensor apply(const Tensor& tensor, const Tensor& rng_state) const {
    if (family == Family::kIndexed) {
      static const auto indexed_backward = operator_handle<IndexedBackwardSignature>(names_of(family).backward);
      return indexed_backward.call(tensor, rng_state, p, variant, index_strides, index_base);
    }
    if (family == Family::kDropPath) {
      static const auto drop_path_backward = operator_handle<DropPathBackwardSignature>("fastdrop::drop_path_backward");
      return drop_path_backward.call(tensor, rng_state, p, scale_by_keep, per_sample);
    }
    static const c10::TypedOperatorHandle<BackwardSignature> backwards[] = {
        operator_handle<BackwardSignature>(kFamilyNames[0].backward),
        operator_handle<BackwardSignature>(kFamilyNames[1].backward),
        operator_handle<BackwardSignature>(kFamilyNames[2].backward),
        operator_handle<BackwardSignature>(kFamilyNames[3].backward),
    };
    return backwards[static_cast<int>(family)].call(tensor, rng_state, p);
  }
};

// How an output's gradient reaches one input of the forward.
enum class Role {
  kMasked,         // the mask applied to it (the dropped operand)
  kMaskedReduced,  // that, summed to the input's shape (a broadcast bias)
  kIdentity,       // itself (a residual)
};

struct Operand {
  const Tensor& tensor;
  Role role;
};

// The backward of every fastdrop forward (and of the *_backward operators).
struct MaskBackward : Node {
  MaskBackward(Mask mask, std::vector<Role> roles) : mask_(mask), roles_(std::move(roles)) {}

  std::string name() const override { return names_of(mask_.family).node; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    rng_state_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    variable_list result(roles_.size());
    const Tensor& grad = grads[0];
    if (!grad.defined()) return result;
    Tensor masked;
    for (size_t i = 0; i < roles_.size(); ++i) {
      if (!task_should_compute_output(i)) continue;
      if (roles_[i] == Role::kIdentity) {
        result[i] = grad;
        continue;
      }
      if (!masked.defined()) masked = masked_gradient(grad);
      result[i] = roles_[i] == Role::kMasked ? masked : at::sum_to(masked, reduced_sizes_);
    }
    return result;
  }

  // A residual wider than its branch (an fp32 residual stream, a bf16 branch) has
  // the output's dtype; the branch's gradient is the mask applied to the gradient
  // cast to the branch's dtype first, as torch's residual + dropout(branch) gives.
  Tensor masked_gradient(const Tensor& given) {
    const Tensor grad = given.scalar_type() == masked_dtype_ ? given : given.to(masked_dtype_);
    const Tensor rng_state = rng_state_.unpack();
    if (at::GradMode::is_enabled() || torch::autograd::isFwGradDefined(grad)) return mask_.apply(grad, rng_state);
    // No graph of this backward is wanted (no create_graph, no tangent): the operator below autograd.
    at::AutoDispatchBelowADInplaceOrView guard;
    return mask_.apply(grad, rng_state);
  }

  Mask mask_;
  std::vector<Role> roles_;
  SavedVariable rng_state_;
  std::vector<c10::SymInt> reduced_sizes_;                   // the kMaskedReduced operand's shape
  at::ScalarType masked_dtype_ = at::ScalarType::Undefined;  // the masked operands' (all one dtype)
};

// Records the history of output = forward(operands) whose mask rng_state
// holds, for backward and for forward-mode AD.
void record(const Tensor& output, const Tensor& rng_state, const Mask& mask, std::initializer_list<Operand> operands) {
  bool requires_grad = false;
  bool has_tangent = false;
  for (const Operand& operand : operands) {
    requires_grad |= torch::autograd::compute_requires_grad(operand.tensor);
    has_tangent |= torch::autograd::isFwGradDefined(operand.tensor);
  }
  if (requires_grad) {
    torch::autograd::edge_list edges;
    auto node = make_node<MaskBackward>(mask, std::vector<Role>{});
    for (const Operand& operand : operands) {
      node->roles_.push_back(operand.role);
      edges.push_back(torch::autograd::impl::gradient_edge(operand.tensor));
      if (operand.role == Role::kMaskedReduced) node->reduced_sizes_ = operand.tensor.sym_sizes().vec();
      if (operand.role != Role::kIdentity) node->masked_dtype_ = operand.tensor.scalar_type();
    }
    node->set_next_edges(std::move(edges));
    node->rng_state_ = SavedVariable(rng_state, false);
    torch::autograd::set_history(output, node);
  }
  if (has_tangent) {
    // Tangents of the masked operands are summed (a bias broadcast) and masked
    // once; those of identity operands (residuals) are added to that.
    Tensor masked, identity;
    for (const Operand& operand : operands) {
      Tensor tangent = operand.tensor._fw_grad(/*level=*/0);
      if (!tangent.defined()) continue;
      Tensor& sum = operand.role == Role::kIdentity ? identity : masked;
      if (operand.role == Role::kMaskedReduced) tangent = tangent.expand_as(output);
      sum = sum.defined() ? sum + tangent : tangent;
    }
    Tensor tangent = masked.defined() ? mask.apply(masked, rng_state) : Tensor();
    if (identity.defined()) tangent = tangent.defined() ? identity + tangent : identity;
    // A branch narrower than its residual: the tangent in the output's dtype, as torch's promotion gives.
    if (tangent.scalar_type() != output.scalar_type()) tangent = tangent.to(output.scalar_type());
    output._set_fw_grad(tangent, /*level=*/0, /*is_inplace_op=*/false);
  }
}

// What the forward, in-place and backward operators of a variant record.
template <Family kFamily>
std::tuple<Tensor, Tensor> forward_autograd(c10::DispatchKeySet keys, const Tensor& input, double p,
                                            std::optional<at::Generator> generator) {
  static const auto op = operator_handle<ForwardSignature>(names_of(kFamily).forward);
  auto [output, rng_state] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, input, p, std::move(generator));
  }();
  record(output, rng_state, Mask{kFamily, p}, {{input, Role::kMasked}});
  return {output, rng_state};
}

template <Family kFamily>
Tensor backward_autograd(c10::DispatchKeySet keys, const Tensor& grad, const Tensor& rng_state, double p) {
  static const auto op = operator_handle<BackwardSignature>(names_of(kFamily).backward);
  Tensor grad_input = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, grad, rng_state, p);
  }();
  record(grad_input, rng_state, Mask{kFamily, p}, {{grad, Role::kMasked}});
  return grad_input;
}

// An in-place form: checks and rebases self's history as torch's in-place
// ops do around run() (the operator below autograd, which returns rng_state),
// and updates self's tangent in place along with it.
template <typename Run>
Tensor inplace_with_history(Tensor& self, const Mask& mask, const Run& run) {
  const bool requires_grad = torch::autograd::compute_requires_grad(self);
  torch::autograd::check_inplace(self, requires_grad);
  NodePtr<MaskBackward> node;
  if (requires_grad) {
    node = make_node<MaskBackward>(mask, std::vector<Role>{Role::kMasked});
    node->masked_dtype_ = self.scalar_type();
    node->set_next_edges(torch::autograd::collect_next_edges(self));
  }
  const Tensor rng_state = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return run();
  }();
  if (node) {
    node->rng_state_ = SavedVariable(rng_state, false);
    torch::autograd::rebase_history(self, node);
  }
  if (torch::autograd::isFwGradDefined(self)) {
    Tensor tangent = self._fw_grad(/*level=*/0);
    tangent.copy_(mask.apply(tangent, rng_state));
  }
  return rng_state;
}

template <Family kFamily>
Tensor inplace_autograd(c10::DispatchKeySet keys, Tensor& self, double p, std::optional<at::Generator> generator) {
  static const auto op = operator_handle<InplaceSignature>(names_of(kFamily).inplace);
  return inplace_with_history(self, Mask{kFamily, p}, [&] {
    return op.redispatch(keys & c10::after_autograd_keyset, self, p, std::move(generator));
  });
}

// The version-counter bump of an in-place form (what ADInplaceOrView does for torch's).
template <typename Run>
Tensor bump_version(Tensor& self, const Run& run) {
  Tensor rng_state;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    rng_state = run();
  }
  torch::autograd::increment_version(self);
  return rng_state;
}

template <Family kFamily>
Tensor inplace_version_bump(c10::DispatchKeySet keys, Tensor& self, double p, std::optional<at::Generator> generator) {
  static const auto op = operator_handle<InplaceSignature>(names_of(kFamily).inplace);
  return bump_version(
      self, [&] { return op.redispatch(keys & c10::after_ADInplaceOrView_keyset, self, p, std::move(generator)); });
}

std::tuple<Tensor, Tensor> drop_path_autograd(c10::DispatchKeySet keys, const Tensor& input, double p,
                                              bool scale_by_keep, bool per_sample,
                                              std::optional<at::Generator> generator) {
  static const auto op = operator_handle<DropPathSignature>("fastdrop::drop_path");
  auto [output, rng_state] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, input, p, scale_by_keep, per_sample, std::move(generator));
  }();
  record(output, rng_state, Mask{Family::kDropPath, p, scale_by_keep, per_sample}, {{input, Role::kMasked}});
  return {output, rng_state};
}

Tensor drop_path_backward_autograd(c10::DispatchKeySet keys, const Tensor& grad, const Tensor& rng_state, double p,
                                   bool scale_by_keep, bool per_sample) {
  static const auto op = operator_handle<DropPathBackwardSignature>("fastdrop::drop_path_backward");
  Tensor grad_input = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, grad, rng_state, p, scale_by_keep, per_sample);
  }();
  record(grad_input, rng_state, Mask{Family::kDropPath, p, scale_by_keep, per_sample}, {{grad, Role::kMasked}});
  return grad_input;
}

std::tuple<Tensor, Tensor> drop_path_add_autograd(c10::DispatchKeySet keys, const Tensor& residual,
                                                  const Tensor& branch, double p, bool scale_by_keep,
                                                  std::optional<at::Generator> generator) {
  using Signature =
      std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, double, bool, std::optional<at::Generator>);
  static const auto op = operator_handle<Signature>("fastdrop::drop_path_add");
  auto [output, rng_state] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, residual, branch, p, scale_by_keep, std::move(generator));
  }();
  record(output, rng_state, Mask{Family::kDropPath, p, scale_by_keep, true},
         {{residual, Role::kIdentity}, {branch, Role::kMasked}});
  return {output, rng_state};
}

std::tuple<Tensor, Tensor> dropout_add_autograd(c10::DispatchKeySet keys, const Tensor& residual, const Tensor& input,
                                                double p, std::optional<at::Generator> generator) {
  using Signature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, double, std::optional<at::Generator>);
  static const auto op = operator_handle<Signature>("fastdrop::dropout_add");
  auto [output, rng_state] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, residual, input, p, std::move(generator));
  }();
  record(output, rng_state, Mask{Family::kDropout, p}, {{residual, Role::kIdentity}, {input, Role::kMasked}});
  return {output, rng_state};
}

std::tuple<Tensor, Tensor> bias_dropout_add_autograd(c10::DispatchKeySet keys, const Tensor& input, const Tensor& bias,
                                                     const Tensor& residual, double p,
                                                     std::optional<at::Generator> generator) {
  using Signature =
      std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, double, std::optional<at::Generator>);
  static const auto op = operator_handle<Signature>("fastdrop::bias_dropout_add");
  auto [output, rng_state] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, input, bias, residual, p, std::move(generator));
  }();
  record(output, rng_state, Mask{Family::kDropout, p},
         {{input, Role::kMasked}, {bias, Role::kMaskedReduced}, {residual, Role::kIdentity}});
  return {output, rng_state};
}

using SubsetSignature = Tensor(const Tensor&, const Tensor&, const Tensor&, double, bool);
using SubsetBackwardSignature = Tensor(const Tensor&, const Tensor&, double, bool, at::ScalarType);

// drop_path_add_subset's backward: the residual's gradient is the incoming one;
// branch_kept's the kept samples' rows of it, cast to the branch's dtype and
// scaled (drop_path_add_subset_backward, differentiable itself).
struct SubsetBackward : Node {
  std::string name() const override { return "FastdropDropPathAddSubsetBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    indices_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    static const auto backward = operator_handle<SubsetBackwardSignature>("fastdrop::drop_path_add_subset_backward");
    variable_list result(2);
    const Tensor& grad = grads[0];
    if (!grad.defined()) return result;
    if (task_should_compute_output(0)) result[0] = grad;
    if (task_should_compute_output(1)) result[1] = backward.call(grad, indices_.unpack(), p_, scale_by_keep_, dtype_);
    return result;
  }

  SavedVariable indices_;
  double p_ = 0.0;
  bool scale_by_keep_ = true;
  at::ScalarType dtype_ = at::ScalarType::Undefined;  // branch_kept's
};

// drop_path_add_subset_backward's own backward (double backward): its gradient
// scattered back to the kept samples' rows, scaled, in the gradient's dtype:
// drop_path_add_subset onto zeros.
struct SubsetGradientBackward : Node {
  std::string name() const override { return "FastdropDropPathAddSubsetBackwardBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    indices_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    static const auto subset = operator_handle<SubsetSignature>("fastdrop::drop_path_add_subset");
    variable_list result(1);
    if (!grads[0].defined() || !task_should_compute_output(0)) return result;
    result[0] = subset.call(at::zeros_symint(sizes_, options_), grads[0], indices_.unpack(), p_, scale_by_keep_);
    return result;
  }

  SavedVariable indices_;
  double p_ = 0.0;
  bool scale_by_keep_ = true;
  std::vector<c10::SymInt> sizes_;  // the gradient's
  at::TensorOptions options_;
};

Tensor drop_path_add_subset_autograd(c10::DispatchKeySet keys, const Tensor& residual, const Tensor& branch_kept,
                                     const Tensor& indices, double p, bool scale_by_keep) {
  static const auto op = operator_handle<SubsetSignature>("fastdrop::drop_path_add_subset");
  Tensor output = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, residual, branch_kept, indices, p, scale_by_keep);
  }();
  if (torch::autograd::compute_requires_grad(residual, branch_kept)) {
    auto node = make_node<SubsetBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(residual, branch_kept));
    node->indices_ = SavedVariable(indices, false);
    node->p_ = p;
    node->scale_by_keep_ = scale_by_keep;
    node->dtype_ = branch_kept.scalar_type();
    torch::autograd::set_history(output, node);
  }
  const bool residual_tangent = torch::autograd::isFwGradDefined(residual);
  const bool branch_tangent = torch::autograd::isFwGradDefined(branch_kept);
  if (residual_tangent || branch_tangent) {
    // The op is linear in (residual, branch_kept): the tangent is the op of the tangents.
    const Tensor t_residual = residual_tangent ? residual._fw_grad(/*level=*/0) : at::zeros_like(residual);
    const Tensor t_branch = branch_tangent ? branch_kept._fw_grad(/*level=*/0) : at::zeros_like(branch_kept);
    output._set_fw_grad(op.call(t_residual, t_branch, indices, p, scale_by_keep), /*level=*/0,
                        /*is_inplace_op=*/false);
  }
  return output;
}

Tensor drop_path_add_subset_backward_autograd(c10::DispatchKeySet keys, const Tensor& grad, const Tensor& indices,
                                              double p, bool scale_by_keep, at::ScalarType dtype) {
  static const auto op = operator_handle<SubsetBackwardSignature>("fastdrop::drop_path_add_subset_backward");
  Tensor grad_kept = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, grad, indices, p, scale_by_keep, dtype);
  }();
  if (torch::autograd::compute_requires_grad(grad)) {
    auto node = make_node<SubsetGradientBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(grad));
    node->indices_ = SavedVariable(indices, false);
    node->p_ = p;
    node->scale_by_keep_ = scale_by_keep;
    node->sizes_ = grad.sym_sizes().vec();
    node->options_ = grad.options();
    torch::autograd::set_history(grad_kept, node);
  }
  if (torch::autograd::isFwGradDefined(grad)) {  // linear: the op of the tangent
    grad_kept._set_fw_grad(op.call(grad._fw_grad(/*level=*/0), indices, p, scale_by_keep, dtype), /*level=*/0,
                           /*is_inplace_op=*/false);
  }
  return grad_kept;
}

using BlockSignature = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, double, at::IntArrayRef, bool, bool, double,
                                                          c10::string_view, std::optional<at::Generator>);
using BlockBackwardSignature = Tensor(const Tensor&, const Tensor&, const Tensor&, double, at::IntArrayRef, bool, bool,
                                      double, c10::string_view);

// A DropBlock call's arguments after its generator: the mask and scale its rng_state and kept give.
struct BlockMask {
  double gamma;
  std::vector<int64_t> block_size;
  bool centred, share_channels;
  double eps;
  std::string scale;

  Tensor apply(const Tensor& tensor, const Tensor& rng_state, const Tensor& kept) const {
    static const auto backward = operator_handle<BlockBackwardSignature>("fastdrop::drop_block_backward");
    return backward.call(tensor, rng_state, kept, gamma, block_size, centred, share_channels, eps, scale);
  }
};

// drop_block's backward (and drop_block_backward's: the op is linear in its
// input): the same scaled mask, rebuilt from rng_state, applied to the gradient.
struct DropBlockBackward : Node {
  explicit DropBlockBackward(BlockMask mask) : mask_(std::move(mask)) {}

  std::string name() const override { return "FastdropDropBlockBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    rng_state_.reset_data();
    kept_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    variable_list result(1);
    const Tensor& grad = grads[0];
    if (!grad.defined() || !task_should_compute_output(0)) return result;
    const Tensor rng_state = rng_state_.unpack(), kept = kept_.unpack();
    if (at::GradMode::is_enabled() || torch::autograd::isFwGradDefined(grad)) {
      result[0] = mask_.apply(grad, rng_state, kept);
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      result[0] = mask_.apply(grad, rng_state, kept);
    }
    return result;
  }

  BlockMask mask_;
  SavedVariable rng_state_, kept_;
};

void record_block(const Tensor& output, const Tensor& input, const Tensor& rng_state, const Tensor& kept,
                  const BlockMask& mask) {
  if (torch::autograd::compute_requires_grad(input)) {
    auto node = make_node<DropBlockBackward>(mask);
    node->set_next_edges(torch::autograd::collect_next_edges(input));
    node->rng_state_ = SavedVariable(rng_state, false);
    node->kept_ = SavedVariable(kept, false);
    torch::autograd::set_history(output, node);
  }
  if (torch::autograd::isFwGradDefined(input)) {  // linear: the mask applied to the tangent
    output._set_fw_grad(mask.apply(input._fw_grad(/*level=*/0), rng_state, kept), /*level=*/0,
                        /*is_inplace_op=*/false);
  }
}

std::tuple<Tensor, Tensor, Tensor> drop_block_autograd(c10::DispatchKeySet keys, const Tensor& input, double gamma,
                                                       at::IntArrayRef block_size, bool centred, bool share_channels,
                                                       double eps, c10::string_view scale,
                                                       std::optional<at::Generator> generator) {
  static const auto op = operator_handle<BlockSignature>("fastdrop::drop_block");
  auto [output, rng_state, kept] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, input, gamma, block_size, centred, share_channels, eps,
                         scale, std::move(generator));
  }();
  record_block(output, input, rng_state, kept,
               BlockMask{gamma, block_size.vec(), centred, share_channels, eps, std::string(scale)});
  return {output, rng_state, kept};
}

Tensor drop_block_backward_autograd(c10::DispatchKeySet keys, const Tensor& grad, const Tensor& rng_state,
                                    const Tensor& kept, double gamma, at::IntArrayRef block_size, bool centred,
                                    bool share_channels, double eps, c10::string_view scale) {
  static const auto op = operator_handle<BlockBackwardSignature>("fastdrop::drop_block_backward");
  Tensor grad_input = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, grad, rng_state, kept, gamma, block_size, centred,
                         share_channels, eps, scale);
  }();
  record_block(grad_input, grad, rng_state, kept,
               BlockMask{gamma, block_size.vec(), centred, share_channels, eps, std::string(scale)});
  return grad_input;
}

Mask indexed_mask(double p, c10::string_view variant, c10::SymIntArrayRef index_strides,
                  const c10::SymInt& index_base) {
  Mask mask{Family::kIndexed, p};
  mask.variant = std::string(variant);
  mask.index_strides = index_strides.vec();
  mask.index_base = index_base;
  return mask;
}

std::tuple<Tensor, Tensor> indexed_dropout_autograd(c10::DispatchKeySet keys, const Tensor& input, double p,
                                                    c10::string_view variant, c10::SymIntArrayRef index_strides,
                                                    c10::SymInt index_base, std::optional<at::Generator> generator) {
  static const auto op = operator_handle<IndexedSignature>(names_of(Family::kIndexed).forward);
  auto [output, rng_state] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, input, p, variant, index_strides, index_base,
                         std::move(generator));
  }();
  record(output, rng_state, indexed_mask(p, variant, index_strides, index_base), {{input, Role::kMasked}});
  return {output, rng_state};
}

Tensor indexed_dropout_inplace_autograd(c10::DispatchKeySet keys, Tensor& self, double p, c10::string_view variant,
                                        c10::SymIntArrayRef index_strides, c10::SymInt index_base,
                                        std::optional<at::Generator> generator) {
  static const auto op = operator_handle<IndexedInplaceSignature>(names_of(Family::kIndexed).inplace);
  return inplace_with_history(self, indexed_mask(p, variant, index_strides, index_base), [&] {
    return op.redispatch(keys & c10::after_autograd_keyset, self, p, variant, index_strides, index_base,
                         std::move(generator));
  });
}

Tensor indexed_dropout_inplace_version_bump(c10::DispatchKeySet keys, Tensor& self, double p, c10::string_view variant,
                                            c10::SymIntArrayRef index_strides, c10::SymInt index_base,
                                            std::optional<at::Generator> generator) {
  static const auto op = operator_handle<IndexedInplaceSignature>(names_of(Family::kIndexed).inplace);
  return bump_version(self, [&] {
    return op.redispatch(keys & c10::after_ADInplaceOrView_keyset, self, p, variant, index_strides, index_base,
                         std::move(generator));
  });
}

Tensor indexed_dropout_backward_autograd(c10::DispatchKeySet keys, const Tensor& grad, const Tensor& rng_state,
                                         double p, c10::string_view variant, c10::SymIntArrayRef index_strides,
                                         c10::SymInt index_base) {
  static const auto op = operator_handle<IndexedBackwardSignature>(names_of(Family::kIndexed).backward);
  Tensor grad_input = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_autograd_keyset, grad, rng_state, p, variant, index_strides, index_base);
  }();
  record(grad_input, rng_state, indexed_mask(p, variant, index_strides, index_base), {{grad, Role::kMasked}});
  return grad_input;
}

template <Family kFamily>
void register_variant(torch::Library& m) {
  const FamilyNames& names = names_of(kFamily);
  m.impl(names.forward, TORCH_FN(forward_autograd<kFamily>));
  m.impl(names.inplace, TORCH_FN(inplace_autograd<kFamily>));
  m.impl(names.backward, TORCH_FN(backward_autograd<kFamily>));
}

}  // namespace
}  // namespace fastdrop

TORCH_LIBRARY_IMPL(fastdrop, Autograd, m) {
  using namespace fastdrop;
  register_variant<Family::kDropout>(m);
  register_variant<Family::kAlphaDropout>(m);
  register_variant<Family::kFeatureDropout>(m);
  register_variant<Family::kFeatureAlphaDropout>(m);
  m.impl("drop_path", TORCH_FN(drop_path_autograd));
  m.impl("drop_path_backward", TORCH_FN(drop_path_backward_autograd));
  m.impl("drop_path_add", TORCH_FN(drop_path_add_autograd));
  m.impl("dropout_add", TORCH_FN(dropout_add_autograd));
  m.impl("bias_dropout_add", TORCH_FN(bias_dropout_add_autograd));
  m.impl("drop_path_add_subset", TORCH_FN(drop_path_add_subset_autograd));
  m.impl("drop_path_add_subset_backward", TORCH_FN(drop_path_add_subset_backward_autograd));
  m.impl("drop_block", TORCH_FN(drop_block_autograd));
  m.impl("drop_block_backward", TORCH_FN(drop_block_backward_autograd));
  m.impl("indexed_dropout", TORCH_FN(indexed_dropout_autograd));
  m.impl("indexed_dropout_", TORCH_FN(indexed_dropout_inplace_autograd));
  m.impl("indexed_dropout_backward", TORCH_FN(indexed_dropout_backward_autograd));
}

TORCH_LIBRARY_IMPL(fastdrop, ADInplaceOrView, m) {
  using namespace fastdrop;
  m.impl("dropout_", TORCH_FN(inplace_version_bump<Family::kDropout>));
  m.impl("alpha_dropout_", TORCH_FN(inplace_version_bump<Family::kAlphaDropout>));
  m.impl("feature_dropout_", TORCH_FN(inplace_version_bump<Family::kFeatureDropout>));
  m.impl("feature_alpha_dropout_", TORCH_FN(inplace_version_bump<Family::kFeatureAlphaDropout>));
  m.impl("indexed_dropout_", TORCH_FN(indexed_dropout_inplace_version_bump));
}
