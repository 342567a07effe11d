//! CUDA C++ sources of the engine kernels (work in progress).
