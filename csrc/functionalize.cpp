// Functionalization of the in-place forms, as aten's in-place ops have it: a
// traced graph (torch.compile, torch.export) gets the out-of-place forward
// and the copy into the input. Without this, torch wraps each in-place call
// in auto_functionalized, which hides the operator's nondeterministic_seeded
// tag from AOTAutograd: a checkpointed region would then recompute it in
// backward with a fresh draw (other masks) instead of replaying its RNG state.
#include <ATen/ATen.h>
#include <ATen/FunctionalTensorWrapper.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace fastdrop {
namespace {

using at::Tensor;
namespace functional = at::functionalization::impl;

// self <- output, where self is a functional tensor: torch's in-place update.
void assign(Tensor& self, const Tensor& output) {
  functional::replace_(self, output);
  functional::commit_update(self);
  functional::sync(self);
}

template <typename... Args>
Tensor inplace_functionalized(const char* forward_name, const char* inplace_name, Tensor& self, Args&&... args) {
  using Forward = std::tuple<Tensor, Tensor>(const Tensor&, std::decay_t<Args>...);
  using Inplace = Tensor(Tensor&, std::decay_t<Args>...);
  // Looked up per call: this runs while tracing only.
  auto& dispatcher = c10::Dispatcher::singleton();
  if (!functional::isFunctionalTensor(self)) {  // a non-functional self: nothing to rewrite
    at::AutoDispatchSkipFunctionalize guard;
    return dispatcher.findSchemaOrThrow(inplace_name, "").typed<Inplace>().call(self, std::forward<Args>(args)...);
  }
  const auto forward = dispatcher.findSchemaOrThrow(forward_name, "").typed<Forward>();
  functional::sync(self);
  const Tensor unwrapped = functional::from_functional_tensor(self);
  Tensor output, rng_state;
  {
    at::AutoDispatchSkipFunctionalize guard;
    std::tie(output, rng_state) = forward.call(unwrapped, std::forward<Args>(args)...);
  }
  assign(self, output);
  return functional::to_functional_tensor(rng_state);
}

template <const char* kForward, const char* kInplace>
Tensor variant_inplace(Tensor& self, double p, std::optional<at::Generator> generator) {
  return inplace_functionalized(kForward, kInplace, self, p, std::move(generator));
}

Tensor indexed_inplace(Tensor& self, double p, c10::string_view variant, c10::SymIntArrayRef index_strides,
                       c10::SymInt index_base, std::optional<at::Generator> generator) {
  return inplace_functionalized("fastdrop::indexed_dropout", "fastdrop::indexed_dropout_", self, p, variant,
                                index_strides, std::move(index_base), std::move(generator));
}

constexpr char kDropout[] = "fastdrop::dropout";
constexpr char kDropoutInplace[] = "fastdrop::dropout_";
constexpr char kAlphaDropout[] = "fastdrop::alpha_dropout";
constexpr char kAlphaDropoutInplace[] = "fastdrop::alpha_dropout_";
constexpr char kFeatureDropout[] = "fastdrop::feature_dropout";
constexpr char kFeatureDropoutInplace[] = "fastdrop::feature_dropout_";
constexpr char kFeatureAlphaDropout[] = "fastdrop::feature_alpha_dropout";
constexpr char kFeatureAlphaDropoutInplace[] = "fastdrop::feature_alpha_dropout_";

}  // namespace
}  // namespace fastdrop

TORCH_LIBRARY_IMPL(fastdrop, Functionalize, m) {
  using namespace fastdrop;
  m.impl("dropout_", TORCH_FN((variant_inplace<kDropout, kDropoutInplace>)));
  m.impl("alpha_dropout_", TORCH_FN((variant_inplace<kAlphaDropout, kAlphaDropoutInplace>)));
  m.impl("feature_dropout_", TORCH_FN((variant_inplace<kFeatureDropout, kFeatureDropoutInplace>)));
  m.impl("feature_alpha_dropout_", TORCH_FN((variant_inplace<kFeatureAlphaDropout, kFeatureAlphaDropoutInplace>)));
  m.impl("indexed_dropout_", TORCH_FN(indexed_inplace));
}
