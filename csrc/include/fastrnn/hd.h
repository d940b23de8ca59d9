// FASTRNN_HD marks functions compiled for both the CPU and the GPU: `__host__ __device__` under nvcc,
// nothing under a plain C++ compiler. Every header of shared per-element math includes this.
#pragma once

#ifdef __CUDACC__
#define FASTRNN_HD __host__ __device__
#else
#define FASTRNN_HD
#endif
