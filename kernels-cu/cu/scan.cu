// Entry points of the selective scan (scan.cuh): f32 inputs, f32 state. Grid (d / dc, b), block
// scan::kThreads. Optional pointers are null when the option is off.
#include "scan.cuh"

// y (b, l, d); last_state (b, d, n) and chunk_states (b, ceil(l / 256), d, n) when non-null.
extern "C" __global__ void __launch_bounds__(scan::kThreads)
    selective_scan_fwd_f32(const float* u, const float* delta, const float* A, const float* B, const float* C,
                           const float* D, const float* z, const float* delta_bias, const float* h0, float* y,
                           float* last_state, float* chunk_states, int l, int d, int n, int g, int dc, int softplus) {
    scan::selective_scan_fwd<float, false>(u, delta, A, B, C, D, z, delta_bias, h0, y, last_state, chunk_states, l, d,
                                           n, g, dc, softplus);
}

// Adds into du, ddelta, dB, dC, dz, dh0; writes per-sequence dA_part (b, d, n), dD_part (b, d)
// and ddb_part (b, d) for sum_rows_into_f32.
extern "C" __global__ void __launch_bounds__(scan::kThreads)
    selective_scan_bwd_f32(const float* u, const float* delta, const float* A, const float* B, const float* C,
                           const float* D, const float* z, const float* delta_bias, const float* chunk_states,
                           const float* dy, const float* dlast, float* du, float* ddelta, float* dB, float* dC,
                           float* dz, float* dh0, float* dA_part, float* dD_part, float* ddb_part, int l, int d, int n,
                           int g, int dc, int softplus) {
    scan::selective_scan_bwd<float>(u, delta, A, B, C, D, z, delta_bias, chunk_states, dy, dlast, du, ddelta, dB, dC,
                                    dz, dh0, dA_part, dD_part, ddb_part, l, d, n, g, dc, softplus);
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(selective_scan_fwd_f32)
EMU_EXPORT(selective_scan_bwd_f32)
#endif
