// Makes the shared library importable as fastdrop._C; importing it runs the
// TORCH_LIBRARY registrations. The module itself carries nothing.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastdrop's compiled operators (see torch.ops.fastdrop)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
