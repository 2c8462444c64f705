// Makes the shared library importable as fastdrop._C; importing it runs the
// TORCH_LIBRARY registrations. The operators live in torch.ops.fastdrop; the
// module itself only reports which CPU generator variant this machine uses.
#include <Python.h>

#include "cpu/philox_cpu.h"

namespace {

PyObject* cpu_generator_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(fastdrop::cpu::fill_element_bits_isa());
}

PyMethodDef methods[] = {
    {"cpu_generator_isa", cpu_generator_isa, METH_NOARGS,
     "The SIMD variant (avx512, avx2 or scalar) that generates random bits on this CPU."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastdrop's compiled operators (see torch.ops.fastdrop)", -1,
                      methods};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
