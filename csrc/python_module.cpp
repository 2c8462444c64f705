// Makes the shared library importable as fastdrop._C; importing it runs the
// TORCH_LIBRARY registrations (the operators live in torch.ops.fastdrop).
//
// It also gives fastdrop.functional a direct way into the operators: a call
// through torch.ops parses its arguments against the schema and boxes them
// (about 3 us a call on a small CPU), more than the whole kernel of an
// activation on a GPU. These entry points take exactly the types the Python
// wrappers pass (after their checks) and call the operators unboxed through
// the dispatcher, so every dispatch key (autograd, functorch, Python modes,
// tensor subclasses) sees the same call; given anything else they return
// NotImplemented and the wrapper calls torch.ops. torch.compile traces the
// torch.ops calls instead (the wrappers check torch.compiler.is_compiling()).
#include <Python.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/Generator.h>
#include <torch/csrc/autograd/python_variable.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include "cpu/huge_pages.h"
#include "cpu/philox_cpu.h"

namespace {

using at::Tensor;
using Generator = std::optional<at::Generator>;

template <typename Signature>
c10::TypedOperatorHandle<Signature> operator_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The GIL is released while an operator runs, as torch.ops does.
struct ReleasedGil {
  PyThreadState* state = PyEval_SaveThread();
  ReleasedGil() = default;
  ReleasedGil(const ReleasedGil&) = delete;
  ReleasedGil& operator=(const ReleasedGil&) = delete;
  ~ReleasedGil() { PyEval_RestoreThread(state); }
};

// Argument readers: true when the object is of the exact type expected.
bool read(PyObject* object, const Tensor*& tensor) {
  if (!THPVariable_Check(object)) return false;
  tensor = &THPVariable_Unpack(object);
  return true;
}

bool read(PyObject* object, double& value) {
  if (!PyFloat_CheckExact(object)) return false;
  value = PyFloat_AS_DOUBLE(object);
  return true;
}

bool read(PyObject* object, bool& value) {
  if (object != Py_True && object != Py_False) return false;
  value = object == Py_True;
  return true;
}

bool read(PyObject* object, Generator& generator) {
  if (object == Py_None) return true;
  const int is_generator = THPGenerator_Check(object);
  if (is_generator != 1) {
    if (is_generator < 0) PyErr_Clear();
    return false;
  }
  generator = reinterpret_cast<THPGenerator*>(object)->cdata;
  return true;
}

// A variant's index (0 to 3).
bool read(PyObject* object, int& value) {
  if (!PyLong_CheckExact(object)) return false;
  const long index = PyLong_AsLong(object);
  if (index == -1 && PyErr_Occurred()) PyErr_Clear();
  value = static_cast<int>(index);
  return index >= 0 && index < 4;
}

template <typename... Values>
bool read_all(PyObject* const* args, Py_ssize_t nargs, Values&... values) {
  if (nargs != static_cast<Py_ssize_t>(sizeof...(Values))) return false;
  Py_ssize_t i = 0;
  return (read(args[i++], values) && ...);
}

using VariantForward = std::tuple<Tensor, Tensor>(const Tensor&, double, Generator);
using VariantInplace = Tensor(Tensor&, double, Generator);

// variant(index, input, p, generator, inplace): dropout, alpha_dropout,
// feature_dropout or feature_alpha_dropout (index 0 to 3); the output, or
// the input itself, dropped in place.
PyObject* variant(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const char* const kNames[] = {"fastdrop::dropout", "fastdrop::alpha_dropout", "fastdrop::feature_dropout",
                                       "fastdrop::feature_alpha_dropout"};
  static const char* const kInplaceNames[] = {"fastdrop::dropout_", "fastdrop::alpha_dropout_",
                                              "fastdrop::feature_dropout_", "fastdrop::feature_alpha_dropout_"};
  static const c10::TypedOperatorHandle<VariantForward> forwards[] = {
      operator_handle<VariantForward>(kNames[0]), operator_handle<VariantForward>(kNames[1]),
      operator_handle<VariantForward>(kNames[2]), operator_handle<VariantForward>(kNames[3])};
  static const c10::TypedOperatorHandle<VariantInplace> inplaces[] = {
      operator_handle<VariantInplace>(kInplaceNames[0]), operator_handle<VariantInplace>(kInplaceNames[1]),
      operator_handle<VariantInplace>(kInplaceNames[2]), operator_handle<VariantInplace>(kInplaceNames[3])};
  int index = 0;
  const Tensor* input = nullptr;
  double p = 0;
  Generator generator;
  bool inplace = false;
  if (!read_all(args, nargs, index, input, p, generator, inplace)) Py_RETURN_NOTIMPLEMENTED;
  if (inplace) {
    Tensor self = *input;
    {
      ReleasedGil released;
      inplaces[index].call(self, p, std::move(generator));
    }
    Py_INCREF(args[1]);
    return args[1];
  }
  Tensor output;
  {
    ReleasedGil released;
    output = std::get<0>(forwards[index].call(*input, p, std::move(generator)));
  }
  return THPVariable_Wrap(std::move(output));
  END_HANDLE_TH_ERRORS
}

// drop_path(input, p, scale_by_keep, per_sample, generator)
PyObject* drop_path(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  using Signature = std::tuple<Tensor, Tensor>(const Tensor&, double, bool, bool, Generator);
  static const auto op = operator_handle<Signature>("fastdrop::drop_path");
  const Tensor* input = nullptr;
  double p = 0;
  bool scale_by_keep = true, per_sample = true;
  Generator generator;
  if (!read_all(args, nargs, input, p, scale_by_keep, per_sample, generator)) Py_RETURN_NOTIMPLEMENTED;
  Tensor output;
  {
    ReleasedGil released;
    output = std::get<0>(op.call(*input, p, scale_by_keep, per_sample, std::move(generator)));
  }
  return THPVariable_Wrap(std::move(output));
  END_HANDLE_TH_ERRORS
}

// dropout_add(residual, input, p, generator)
PyObject* dropout_add(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  using Signature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, double, Generator);
  static const auto op = operator_handle<Signature>("fastdrop::dropout_add");
  const Tensor *residual = nullptr, *input = nullptr;
  double p = 0;
  Generator generator;
  if (!read_all(args, nargs, residual, input, p, generator)) Py_RETURN_NOTIMPLEMENTED;
  Tensor output;
  {
    ReleasedGil released;
    output = std::get<0>(op.call(*residual, *input, p, std::move(generator)));
  }
  return THPVariable_Wrap(std::move(output));
  END_HANDLE_TH_ERRORS
}

// bias_dropout_add(input, bias, residual, p, generator)
PyObject* bias_dropout_add(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  using Signature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, double, Generator);
  static const auto op = operator_handle<Signature>("fastdrop::bias_dropout_add");
  const Tensor *input = nullptr, *bias = nullptr, *residual = nullptr;
  double p = 0;
  Generator generator;
  if (!read_all(args, nargs, input, bias, residual, p, generator)) Py_RETURN_NOTIMPLEMENTED;
  Tensor output;
  {
    ReleasedGil released;
    output = std::get<0>(op.call(*input, *bias, *residual, p, std::move(generator)));
  }
  return THPVariable_Wrap(std::move(output));
  END_HANDLE_TH_ERRORS
}

// drop_path_add(residual, branch, p, scale_by_keep, generator)
PyObject* drop_path_add(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  using Signature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, double, bool, Generator);
  static const auto op = operator_handle<Signature>("fastdrop::drop_path_add");
  const Tensor *residual = nullptr, *branch = nullptr;
  double p = 0;
  bool scale_by_keep = true;
  Generator generator;
  if (!read_all(args, nargs, residual, branch, p, scale_by_keep, generator)) Py_RETURN_NOTIMPLEMENTED;
  Tensor output;
  {
    ReleasedGil released;
    output = std::get<0>(op.call(*residual, *branch, p, scale_by_keep, std::move(generator)));
  }
  return THPVariable_Wrap(std::move(output));
  END_HANDLE_TH_ERRORS
}

PyObject* cpu_generator_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(fastdrop::cpu::fill_element_bits_isa());
}

PyObject* cpu_huge_pages(PyObject*, PyObject*) { return PyBool_FromLong(fastdrop::cpu::huge_page_advice_enabled()); }

PyMethodDef methods[] = {
    {"variant", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(variant)), METH_FASTCALL,
     "variant(index, input, p, generator, inplace): fastdrop::dropout, alpha_dropout, feature_dropout or "
     "feature_alpha_dropout (index 0-3), or its in-place form; NotImplemented for other argument types."},
    {"drop_path", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(drop_path)), METH_FASTCALL,
     "drop_path(input, p, scale_by_keep, per_sample, generator): fastdrop::drop_path's output."},
    {"dropout_add", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(dropout_add)), METH_FASTCALL,
     "dropout_add(residual, input, p, generator): fastdrop::dropout_add's output."},
    {"bias_dropout_add", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(bias_dropout_add)), METH_FASTCALL,
     "bias_dropout_add(input, bias, residual, p, generator): fastdrop::bias_dropout_add's output."},
    {"drop_path_add", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(drop_path_add)), METH_FASTCALL,
     "drop_path_add(residual, branch, p, scale_by_keep, generator): fastdrop::drop_path_add's output."},
    {"cpu_generator_isa", cpu_generator_isa, METH_NOARGS,
     "The SIMD variant (avx512, avx2 or scalar) that generates random bits on this CPU."},
    {"cpu_huge_pages", cpu_huge_pages, METH_NOARGS,
     "Whether large CPU outputs ask for transparent huge pages in this process (csrc/cpu/huge_pages.h)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastdrop's compiled operators (see torch.ops.fastdrop)", -1,
                      methods};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
