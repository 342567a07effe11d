// Entry points of the selective scan (scan.cuh): f32 inputs, f32 state. Grid (d / dc, b, segments),
// block scan::kThreads; a split scan runs the map pass, selective_scan_chain_f32 and the full pass.
// Optional pointers are null when the option is off.
#include "scan.cuh"

// y (b, l, d); last_state (b, d, n) and chunk_states (b, ceil(l / 256), d, n) when non-null; h0
// (b, segments, d, n). With seg_map: the segment maps (b, segments, d, n) and dt_sum (b, segments, d).
extern "C" __global__ void __launch_bounds__(scan::kThreads)
    selective_scan_fwd_f32(const float* u, const float* delta, const float* A, const float* B, const float* C,
                           const float* D, const float* z, const float* delta_bias, const float* h0, float* y,
                           float* last_state, float* chunk_states, float* seg_map, float* dt_sum, int l, int d, int n,
                           int g, int dc, int seg_chunks, int softplus) {
    scan::selective_scan_fwd<float, false>(u, delta, A, B, C, D, z, delta_bias, h0, y, last_state, chunk_states,
                                           seg_map, dt_sum, l, d, n, g, dc, seg_chunks, softplus);
}

// Adds into du, ddelta, dB, dC, dz, dh0; writes per-sequence-and-segment dA_part (b, segments, d, n),
// dD_part and ddb_part (b, segments, d) for sum_rows_into_f32; dlast (b, segments, d, n). With
// seg_map: the segment maps (b, segments, d, n) and dt_sum (b, segments, d) only.
extern "C" __global__ void __launch_bounds__(scan::kThreads)
    selective_scan_bwd_f32(const float* u, const float* delta, const float* A, const float* B, const float* C,
                           const float* D, const float* z, const float* delta_bias, const float* chunk_states,
                           const float* dy, const float* dlast, float* du, float* ddelta, float* dB, float* dC,
                           float* dz, float* dh0, float* dA_part, float* dD_part, float* ddb_part, float* seg_map,
                           float* dt_sum, int l, int d, int n, int g, int dc, int seg_chunks, int softplus) {
    scan::selective_scan_bwd<float>(u, delta, A, B, C, D, z, delta_bias, chunk_states, dy, dlast, du, ddelta, dB, dC,
                                    dz, dh0, dA_part, dD_part, ddb_part, seg_map, dt_sum, l, d, n, g, dc, seg_chunks,
                                    softplus);
}

// seg (b, segments, d, n): segment maps in, starting states (or end gradients when reverse) out.
extern "C" __global__ void selective_scan_chain_f32(const float* A, const float* dt_sum, const float* init, float* seg,
                                                    int b, int d, int n, int segments, int reverse) {
    scan::chain_segments(A, dt_sum, init, seg, b, d, n, segments, reverse);
}

#ifdef CUDA_CPU_EMULATION
EMU_EXPORT(selective_scan_fwd_f32)
EMU_EXPORT(selective_scan_bwd_f32)
EMU_EXPORT(selective_scan_chain_f32)
#endif
