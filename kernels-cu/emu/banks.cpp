// Shared-memory bank conflicts, counted as a GPU serves a warp's shared-memory requests.
//
// Instrumentation: build.rs compiles the kernels with -fsanitize=thread for its instrumentation
// only. GCC then calls __tsan_read4(address) and the like before every memory access it cannot
// prove private to the thread; this file defines those hooks (ThreadSanitizer's runtime is not
// linked), and they return at once unless a launch asked for counting and the address lies in
// shared memory. A ThreadSanitizer build keeps the real hooks and cannot count.
//
// The model: a request is the k-th shared-memory access of each lane of a warp since the warp last
// synchronized (__syncthreads, a warp intrinsic, __syncwarp), made by one instruction (the hook's
// return address); lanes at the same k but at different instructions (divergent code) are separate
// requests, as the GPU issues them separately. Shared memory has 32 banks of 4-byte words; lanes
// that read the same word are served by one broadcast, so the degree of a request (the number of
// wavefronts it takes) is the largest number of distinct words that fall in one bank. An 8- or
// 16-byte access counts each of its words: 32 lanes reading consecutive 8-byte values touch 64
// words, two per bank, degree 2, which is what the hardware takes for 256 bytes (two 128-byte
// wavefronts). Range accesses (aggregate copies) and atomics are not counted.
#include "banks.h"

#include <dlfcn.h>

#include <algorithm>
#include <map>
#include <vector>

namespace emu::banks {
namespace {

constexpr int kBanks = 32;
constexpr unsigned long long kWordBytes = 4;
constexpr unsigned kMaxWords = 4;  // a 16-byte access

// The accesses of one warp that share a sequence number.
struct Request {
    unsigned mask = 0;
    unsigned long long pc[32];
    unsigned long long word[32];  // the first word a lane touched (address / 4)
    unsigned char words[32];      // how many consecutive words
};

struct Site {
    unsigned long long requests = 0, degree_sum = 0;
    unsigned worst = 0;
};

struct Recorder {
    BankStats* out = nullptr;
    const unsigned char* lo[2];
    const unsigned char* hi[2];
    std::vector<unsigned> seq;                 // per thread: accesses since its warp synchronized
    std::vector<std::vector<Request>> warps;   // per warp: its pending requests by sequence number
    std::map<unsigned long long, Site> sites;  // by pc
};

// One launch at a time holds the runtime's launch mutex, and counting needs a fiber schedule, so
// a plain global serves.
Recorder g_rec;
bool g_on = false;

// Degree of the lanes of `r` (in `lanes`) that ran instruction `pc`.
unsigned degree(const Request& r, unsigned lanes, unsigned long long pc) {
    unsigned long long words[32 * kMaxWords];
    int n = 0;
    for (unsigned m = lanes; m; m &= m - 1) {
        const int lane = __builtin_ctz(m);
        if (r.pc[lane] != pc) continue;
        for (unsigned i = 0; i < r.words[lane]; ++i) words[n++] = r.word[lane] + i;
    }
    std::sort(words, words + n);
    n = (int)(std::unique(words, words + n) - words);
    unsigned per_bank[kBanks] = {};
    unsigned worst = 0;
    for (int i = 0; i < n; ++i) worst = std::max(worst, ++per_bank[words[i] % kBanks]);
    return worst;
}

void complete(std::vector<Request>& pending) {
    for (const Request& r : pending) {
        unsigned left = r.mask;
        while (left) {
            const unsigned long long pc = r.pc[__builtin_ctz(left)];
            unsigned same = 0;
            for (unsigned m = left; m; m &= m - 1)
                if (r.pc[__builtin_ctz(m)] == pc) same |= 1u << __builtin_ctz(m);
            const unsigned d = degree(r, same, pc);
            Site& s = g_rec.sites[pc];
            ++s.requests;
            s.degree_sum += d;
            s.worst = std::max(s.worst, d);
            left &= ~same;
        }
    }
    pending.clear();
}

#if !defined(__SANITIZE_THREAD__)
// Called by the hooks at the end of this file, which a ThreadSanitizer build leaves out.
void access(const void* p, unsigned long size, const void* ret) {
    if (!g_on) return;
    const auto* a = static_cast<const unsigned char*>(p);
    if (!((a >= g_rec.lo[0] && a < g_rec.hi[0]) || (a >= g_rec.lo[1] && a < g_rec.hi[1]))) return;
    const ThreadState* t = current;
    const unsigned linear = t->thread_idx.x + t->block_dim.x * (t->thread_idx.y + t->block_dim.y * t->thread_idx.z);
    const unsigned lane = linear % 32;
    std::vector<Request>& pending = g_rec.warps[linear / 32];
    const unsigned k = g_rec.seq[linear]++;
    if (pending.size() <= k) pending.resize(k + 1);
    Request& r = pending[k];
    const auto addr = reinterpret_cast<unsigned long long>(a);
    r.mask |= 1u << lane;
    r.pc[lane] = reinterpret_cast<unsigned long long>(ret) - 1;  // inside the call instruction
    r.word[lane] = addr / kWordBytes;
    r.words[lane] = (unsigned char)std::min<unsigned long long>((addr + size - 1) / kWordBytes - addr / kWordBytes + 1,
                                                                kMaxWords);
}
#endif

}  // namespace

#if defined(__SANITIZE_THREAD__)
bool available() { return false; }
#else
bool available() { return true; }
#endif

void begin(BankStats* out, unsigned threads, const unsigned char* static_base, unsigned long static_bytes,
           const unsigned char* dynamic_base, unsigned long dynamic_bytes) {
    g_rec.out = out;
    g_rec.lo[0] = static_base;
    g_rec.hi[0] = static_base + static_bytes;
    g_rec.lo[1] = dynamic_base;
    g_rec.hi[1] = dynamic_base + dynamic_bytes;
    g_rec.seq.assign(threads, 0);
    g_rec.warps.assign((threads + 31) / 32, {});
    g_rec.sites.clear();
    g_on = out != nullptr;
}

void sync_warp(unsigned warp) {
    if (!g_on) return;
    complete(g_rec.warps[warp]);
    const unsigned end = std::min<unsigned>((warp + 1) * 32, (unsigned)g_rec.seq.size());
    for (unsigned i = warp * 32; i < end; ++i) g_rec.seq[i] = 0;
}

void sync_block() {
    if (!g_on) return;
    for (unsigned w = 0; w < g_rec.warps.size(); ++w) sync_warp(w);
}

void end() {
    if (!g_on) return;
    g_on = false;
    BankStats& o = *g_rec.out;
    o.count = (unsigned)g_rec.sites.size();
    o.requests = o.degree_sum = 0;
    o.worst = 0;
    unsigned i = 0;
    for (const auto& [pc, s] : g_rec.sites) {
        o.requests += s.requests;
        o.degree_sum += s.degree_sum;
        o.worst = std::max(o.worst, s.worst);
        if (i >= o.cap) continue;
        Dl_info info;
        const unsigned long long base =
            dladdr(reinterpret_cast<void*>(pc), &info) ? reinterpret_cast<unsigned long long>(info.dli_fbase) : 0;
        o.sites[i++] = BankSite{pc - base, s.requests, s.degree_sum, s.worst};
    }
}

}  // namespace emu::banks

#if !defined(__SANITIZE_THREAD__)
// The hooks GCC's -fsanitize=thread instrumentation calls. Plain, unaligned and volatile accesses
// of 1 to 16 bytes are counted; the rest only has to do what the instrumented code expects.
#define EMU_HOOK(name, size) \
    extern "C" void name(void* p) { emu::banks::access(p, size, __builtin_return_address(0)); }
#define EMU_HOOKS(size)                                \
    EMU_HOOK(__tsan_read##size, size)                  \
    EMU_HOOK(__tsan_write##size, size)                 \
    EMU_HOOK(__tsan_unaligned_read##size, size)        \
    EMU_HOOK(__tsan_unaligned_write##size, size)       \
    EMU_HOOK(__tsan_volatile_read##size, size)         \
    EMU_HOOK(__tsan_volatile_write##size, size)
EMU_HOOKS(1)
EMU_HOOKS(2)
EMU_HOOKS(4)
EMU_HOOKS(8)
EMU_HOOKS(16)

extern "C" void __tsan_read_range(void*, unsigned long) {}
extern "C" void __tsan_write_range(void*, unsigned long) {}
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}

// Atomics: the instrumentation turns every __atomic builtin into one of these; sequentially
// consistent is at least as strong as any order asked for.
#define EMU_ATOMIC_RMW(bits, T, op) \
    extern "C" T __tsan_atomic##bits##_##op(volatile T* a, T v, int) { return __atomic_##op(a, v, __ATOMIC_SEQ_CST); }
#define EMU_ATOMICS(bits, T)                                                                                   \
    extern "C" T __tsan_atomic##bits##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
    extern "C" void __tsan_atomic##bits##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
    extern "C" T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) {                                     \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                     \
    }                                                                                                           \
    EMU_ATOMIC_RMW(bits, T, fetch_add)                                                                          \
    EMU_ATOMIC_RMW(bits, T, fetch_sub)                                                                          \
    EMU_ATOMIC_RMW(bits, T, fetch_and)                                                                          \
    EMU_ATOMIC_RMW(bits, T, fetch_or)                                                                           \
    EMU_ATOMIC_RMW(bits, T, fetch_xor)                                                                          \
    EMU_ATOMIC_RMW(bits, T, fetch_nand)                                                                         \
    extern "C" int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {         \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                  \
    }                                                                                                           \
    extern "C" int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {           \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                  \
    }                                                                                                           \
    extern "C" T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {               \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                        \
        return c;                                                                                               \
    }
EMU_ATOMICS(8, unsigned char)
EMU_ATOMICS(16, unsigned short)
EMU_ATOMICS(32, unsigned)
EMU_ATOMICS(64, unsigned long long)

extern "C" void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
extern "C" void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
#endif
