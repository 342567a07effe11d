// The selective scan forward with the barrier between writing and reading the warp totals of the
// block scan removed. In-order scheduling still computes the right answer (warp 0 runs ahead and
// writes its totals before warp 1 reads them); a random schedule does not. The kernel tests assert
// exactly that, which proves that the emulation harness can fail.
#include "scan.cuh"

extern "C" __global__ void __launch_bounds__(scan::kThreads)
    selective_scan_fwd_broken_f32(const float* u, const float* delta, const float* A, const float* B, const float* C,
                                  const float* D, const float* z, const float* delta_bias, const float* h0, float* y,
                                  float* last_state, float* chunk_states, float* seg_map, float* dt_sum, int l, int d,
                                  int n, int g, int dc, int seg_chunks, int softplus) {
    scan::selective_scan_fwd<float, true>(u, delta, A, B, C, D, z, delta_bias, h0, y, last_state, chunk_states,
                                          seg_map, dt_sum, l, d, n, g, dc, seg_chunks, softplus);
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(selective_scan_fwd_broken_f32)
#endif
