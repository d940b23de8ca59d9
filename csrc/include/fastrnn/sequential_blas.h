// CPU only: makes BLAS calls on the current thread single-threaded for the guard's lifetime.
//
// Why: the LSTM kernels split the batch across threads (at::parallel_for) and each thread then calls
// at::addmm per time step. torch's MKL is set up with mkl_set_dynamic(false) by at::set_num_threads, so
// MKL does not notice it is already inside a parallel region: every small GEMM started its own team of
// threads. Measured here (2 threads, 300 GEMMs [16x128]x[128x512] per thread): 42-57 ms of CPU and
// 63-87 ms wall without this guard, 14 ms of CPU (equal to one thread doing all the work) with it.
//
// MKL_Set_Num_Threads_Local is MKL's per-thread setting. It is declared weak: with a torch built on
// MKL (the x86 wheels) the dynamic linker finds it in libtorch_cpu; elsewhere it stays null and the guard
// does nothing.
#pragma once

extern "C" int MKL_Set_Num_Threads_Local(int nthreads) __attribute__((weak));

namespace fastrnn {

class SequentialBlasGuard {
 public:
  SequentialBlasGuard() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SequentialBlasGuard() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);  // 0 = back to the global setting
  }
  SequentialBlasGuard(const SequentialBlasGuard&) = delete;
  SequentialBlasGuard& operator=(const SequentialBlasGuard&) = delete;

 private:
  int previous_;
};

}  // namespace fastrnn
