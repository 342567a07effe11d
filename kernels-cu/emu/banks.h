// Bank-conflict counting (emu/banks.cpp), driven by the scheduler in emu/runtime.cpp.
#pragma once

#include "cuda_emu.h"

namespace emu::banks {

// Whether this build can count: not under ThreadSanitizer, whose runtime owns the hooks.
bool available();
// Starts counting into `out` for a launch of blocks of `threads` threads, the accesses that fall in
// [static_base, +static_bytes) or [dynamic_base, +dynamic_bytes).
void begin(BankStats* out, unsigned threads, const unsigned char* static_base, unsigned long static_bytes,
           const unsigned char* dynamic_base, unsigned long dynamic_bytes);
// The lanes of `warp` passed a warp-wide synchronization: their requests so far are complete.
void sync_warp(unsigned warp);
// Every thread of the block passed a barrier, or the block ended.
void sync_block();
// Writes the launch's figures to `out` and stops counting.
void end();

}  // namespace emu::banks
