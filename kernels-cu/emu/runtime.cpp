// The scheduler behind cuda_emu.h: runs the blocks of a grid one at a time, the threads of a block
// as fibers switched by hand-written x86-64 assembly (or as OS threads for ThreadSanitizer), with
// block barriers and warp exchanges as the only points where control changes hands.
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "banks.h"
#include "cuda_emu.h"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

// emu_switch_context(save, load): pushes the callee-saved registers on the current stack, stores
// the stack pointer in *save, switches to the stack `load` and pops the same from there. The
// floating-point control state (MXCSR, x87 control word) is left alone: no kernel changes it, and
// restoring it costs a quarter of a switch. A new fiber's stack is prepared so that the switch
// "returns" into emu_fiber_entry with the fiber in r12 and its main function in r13.
asm(R"(
    .pushsection .text
    .globl emu_switch_context
    .hidden emu_switch_context
    .type emu_switch_context, @function
emu_switch_context:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_context, .-emu_switch_context

    .globl emu_fiber_entry
    .hidden emu_fiber_entry
    .type emu_fiber_entry, @function
emu_fiber_entry:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_entry, .-emu_fiber_entry
    .popsection
)");

extern "C" void emu_switch_context(void** save, void* load);
extern "C" void emu_fiber_entry();

namespace emu {

thread_local const ThreadState* current = nullptr;

namespace {

constexpr unsigned kMaxThreads = 1024;
constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kDynamicSharedBytes = 227 * 1024;  // sm_90's largest opt-in shared memory per block
constexpr size_t kStaticSharedBytes = 48 * 1024;    // the most static __shared__ a block may declare
constexpr unsigned long long kPoison = ~0ull;        // what a shuffle from an exited lane reads
constexpr auto kThreadDeadlockTimeout = std::chrono::seconds(120);

alignas(128) unsigned char g_dynamic_shared[kDynamicSharedBytes];
alignas(128) unsigned char g_static_shared[kStaticSharedBytes];  // the arena of __shared__ declarations
size_t g_static_used = kStaticSharedBytes;  // bytes the last block allocated: all of them (zeros) at first
unsigned long long g_block_serial = 0;      // numbers every block of every launch, from 1
std::mutex g_launch_mutex;  // shared memory is global: one launch at a time
unsigned char* g_stacks = nullptr;
size_t g_stack_stride = 0;

struct Exec;

enum Status { kRunnable, kWaiting, kDone };

struct Fiber {
    ThreadState state;
    Exec* exec;
    unsigned linear, lane, warp;
    void* sp;
    Status status;
    const char* waiting_at;
    void* tsan;  // ThreadSanitizer's context for this fiber, when built with it
};

// ThreadSanitizer must hear of every fiber switch, or it sees one thread's stack jump around.
// Flag 0 makes a switch a synchronization, so the fiber schedules report nothing: finding races
// with TSan is what the OS-thread schedule is for.
#if defined(__SANITIZE_THREAD__)
void* tsan_current() { return __tsan_get_current_fiber(); }
void* tsan_create() { return __tsan_create_fiber(0); }
void tsan_destroy(void* f) { __tsan_destroy_fiber(f); }
void tsan_switch(void* f) { __tsan_switch_to_fiber(f, 0); }
#else
void* tsan_current() { return nullptr; }
void* tsan_create() { return nullptr; }
void tsan_destroy(void*) {}
void tsan_switch(void*) {}
#endif

thread_local Fiber* t_self = nullptr;

// Threads that must all arrive before any continues: the block, or one warp.
struct Group {
    int live = 0;
    int arrived = 0;
    unsigned long long generation = 0;
    std::vector<Fiber*> waiters;
};

struct Slot {
    int kind;
    unsigned mask;
    unsigned long long value;
    int arg;
    int width;
    unsigned long long result;
};

struct Warp {
    Group group;
    unsigned live_mask;
    Slot slot[32];
};

const char* op_name(int kind) {
    static const char* names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                  "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp"};
    return kind >= 0 && kind <= kSyncWarp ? names[kind] : "?";
}

struct Exec {
    int schedule = kScheduleRandom;
    void (*body)(void*) = nullptr;
    void* closure = nullptr;
    std::vector<Fiber> fibers;
    Group bar;
    std::vector<Warp> warps;
    std::vector<Fiber*> runnable;
    void* sched_sp = nullptr;
    void* sched_tsan = nullptr;
    unsigned long long rng = 0;
    unsigned long long block_serial = 0;
    bool failed = false;
    std::string error;
    std::mutex mu;  // OS-thread mode only
    std::condition_variable cv;

    bool threads() const { return schedule == kScheduleThreads; }

    void fail(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
        char buf[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        if (threads()) {
            fprintf(stderr, "cuda emulation: %s\n", buf);
            std::abort();
        }
        if (!failed) error = buf;
        failed = true;
    }
};

unsigned long long splitmix64(unsigned long long& s) {
    unsigned long long z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// The next fiber to run: random among the runnable ones, or the lowest thread index in order.
Fiber* pick_next(Exec& e) {
    if (e.failed || e.runnable.empty()) return nullptr;
    size_t pick = 0;
    if (e.schedule == kScheduleInOrder) {
        for (size_t i = 1; i < e.runnable.size(); ++i)
            if (e.runnable[i]->linear < e.runnable[pick]->linear) pick = i;
    } else {
        pick = splitmix64(e.rng) % e.runnable.size();
    }
    Fiber* f = e.runnable[pick];
    e.runnable[pick] = e.runnable.back();
    e.runnable.pop_back();
    return f;
}

// Fiber `f` stops at a synchronization point (or exits): control goes straight to the next
// runnable fiber, which may be `f` itself, or back to the scheduler when none is left.
void switch_from(Exec& e, Fiber* f) {
    Fiber* next = pick_next(e);
    if (next == f) return;
    t_self = next;
    current = next ? &next->state : nullptr;
    tsan_switch(next ? next->tsan : e.sched_tsan);
    emu_switch_context(&f->sp, next ? next->sp : e.sched_sp);
}

// The results of one warp operation for every live lane, computed by the last lane to arrive.
void complete_warp(Exec& e, Warp& w) {
    const unsigned live = w.live_mask;
    if (live == 0) return;
    const Slot& first = w.slot[__builtin_ctz(live)];
    for (unsigned m = live; m; m &= m - 1) {
        const int lane = __builtin_ctz(m);
        const Slot& s = w.slot[lane];
        if (s.kind != first.kind || s.width != first.width) {
            e.fail("divergent warp operations: lane %d in %s (width %d), lane %d in %s (width %d)",
                   __builtin_ctz(live), op_name(first.kind), first.width, lane, op_name(s.kind), s.width);
            return;
        }
        if ((s.mask & live) != live) {
            e.fail("%s with mask 0x%08x leaves out live lanes (live 0x%08x): partial-mask warp operations are "
                   "not emulated", op_name(s.kind), s.mask, live);
            return;
        }
    }
    const int width = first.width;
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
        e.fail("%s with width %d: the width must be a power of two up to 32", op_name(first.kind), width);
        return;
    }
    auto value_of = [&](int src) { return src >= 0 && src < 32 && (live >> src) & 1 ? w.slot[src].value : kPoison; };
    unsigned votes = 0;
    for (unsigned m = live; m; m &= m - 1) {
        const int lane = __builtin_ctz(m);
        if (w.slot[lane].value != 0) votes |= 1u << lane;
    }
    for (unsigned m = live; m; m &= m - 1) {
        const int lane = __builtin_ctz(m);
        Slot& s = w.slot[lane];
        const int base = lane & ~(width - 1);
        switch (s.kind) {
            case kShfl: s.result = value_of(base + (s.arg & (width - 1))); break;
            case kShflUp: s.result = lane - s.arg >= base ? value_of(lane - s.arg) : s.value; break;
            case kShflDown: s.result = lane + s.arg < base + width ? value_of(lane + s.arg) : s.value; break;
            case kShflXor: {
                const int src = lane ^ s.arg;
                s.result = src < base + width ? value_of(src) : s.value;
                break;
            }
            case kBallot: s.result = votes & s.mask; break;
            case kAny: s.result = (votes & s.mask) != 0; break;
            case kAll: s.result = (votes & s.mask & live) == (s.mask & live); break;
            default: s.result = 0; break;
        }
    }
}

void release(Exec& e, Group& g, Warp* w) {
    if (w) {
        complete_warp(e, *w);
        banks::sync_warp((unsigned)(w - e.warps.data()));
    } else {
        banks::sync_block();
    }
    g.arrived = 0;
    ++g.generation;
    if (e.threads()) {
        e.cv.notify_all();
        return;
    }
    for (Fiber* f : g.waiters) {
        f->status = kRunnable;
        e.runnable.push_back(f);
    }
    g.waiters.clear();
}

// A thread arrives at group `g` (the block barrier, or its warp for a warp operation) and waits
// until every live member has arrived.
void arrive(Exec& e, Fiber* f, Group& g, Warp* w, const char* what) {
    if (e.threads()) {
        std::unique_lock<std::mutex> lk(e.mu);
        const unsigned long long gen = g.generation;
        if (++g.arrived == g.live) {
            release(e, g, w);
        } else if (!e.cv.wait_for(lk, kThreadDeadlockTimeout, [&] { return g.generation != gen; })) {
            e.fail("no progress for %lld s at %s: deadlock", (long long)kThreadDeadlockTimeout.count(), what);
        }
        return;
    }
    f->waiting_at = what;
    f->status = kWaiting;
    g.waiters.push_back(f);
    if (++g.arrived == g.live) release(e, g, w);
    switch_from(e, f);
}

// A thread returns from the kernel: it leaves its warp and the block, which may complete a
// barrier that the others were waiting at.
void finish(Exec& e, Fiber* f) {
    std::unique_lock<std::mutex> lk(e.mu, std::defer_lock);
    if (e.threads()) lk.lock();
    Warp& w = e.warps[f->warp];
    w.live_mask &= ~(1u << f->lane);
    --w.group.live;
    --e.bar.live;
    f->status = kDone;
    if (w.group.arrived > 0 && w.group.arrived == w.group.live) release(e, w.group, &w);
    if (e.bar.arrived > 0 && e.bar.arrived == e.bar.live) release(e, e.bar, nullptr);
}

void fiber_main(Fiber* f) {
    Exec& e = *f->exec;
    e.body(e.closure);
    finish(e, f);
    switch_from(e, f);
    std::abort();  // a finished fiber is never resumed
}

void ensure_stacks() {
    if (g_stacks) return;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    g_stack_stride = kStackBytes + page;
    void* p = mmap(nullptr, kMaxThreads * g_stack_stride, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "cuda emulation: cannot map fiber stacks\n");
        std::abort();
    }
    g_stacks = static_cast<unsigned char*>(p);
    for (unsigned i = 0; i < kMaxThreads; ++i) mprotect(g_stacks + i * g_stack_stride, page, PROT_NONE);  // guard
}

// The frame emu_switch_context pops: r15, r14, r13, r12, rbx, rbp, return address. The return
// lands in emu_fiber_entry with rsp 16-byte aligned, as the call it makes requires.
void prepare_stack(Fiber& f) {
    unsigned char* top = g_stacks + (f.linear + 1) * g_stack_stride;
    auto* sp = reinterpret_cast<unsigned long long*>(top - 56);
    sp[0] = sp[1] = sp[4] = sp[5] = 0;
    sp[2] = reinterpret_cast<unsigned long long>(&fiber_main);
    sp[3] = reinterpret_cast<unsigned long long>(&f);
    sp[6] = reinterpret_cast<unsigned long long>(&emu_fiber_entry);
    f.sp = sp;
}

void run_fibers(Exec& e) {
    ensure_stacks();
    e.runnable.clear();
    e.sched_tsan = tsan_current();
    for (Fiber& f : e.fibers) {
        prepare_stack(f);
        f.tsan = tsan_create();
        e.runnable.push_back(&f);
    }
    if (Fiber* first = pick_next(e)) {
        t_self = first;
        current = &first->state;
        tsan_switch(first->tsan);
        emu_switch_context(&e.sched_sp, first->sp);
    }
    for (Fiber& f : e.fibers) tsan_destroy(f.tsan);
    t_self = nullptr;
    current = nullptr;
    if (e.failed || e.bar.live == 0) return;  // done, or stopped at the first error
    int at_barrier = 0, at_warp = 0;
    const char* warp_op_name = "";
    for (Fiber& f : e.fibers) {
        if (f.status != kWaiting) continue;
        if (std::strcmp(f.waiting_at, "__syncthreads") == 0) {
            ++at_barrier;
        } else {
            ++at_warp;
            warp_op_name = f.waiting_at;
        }
    }
    e.fail("deadlock: %d threads wait at __syncthreads and %d at a warp operation %s; some live thread never "
           "reaches the barrier or warp operation the others wait at", at_barrier, at_warp, warp_op_name);
}

// The OS threads of the thread schedule, one per CUDA thread of a block, reused for every block
// of a launch: creating them per block would dominate the run time.
class BlockThreads {
   public:
    BlockThreads(Exec& e, unsigned n) : e_(e), n_(n) {
        threads_.reserve(n);
        for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this, i] { serve(i); });
    }

    ~BlockThreads() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            stop_ = true;
            ++generation_;
        }
        cv_.notify_all();
        for (std::thread& t : threads_) t.join();
    }

    // Runs the block that reset_block prepared in `e` and waits for all its threads to return.
    void run_block() {
        std::unique_lock<std::mutex> lk(mu_);
        done_ = 0;
        ++generation_;
        cv_.notify_all();
        cv_.wait(lk, [&] { return done_ == n_; });
    }

   private:
    void serve(unsigned i) {
        unsigned long long seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lk(mu_);
                cv_.wait(lk, [&] { return generation_ != seen; });
                seen = generation_;
                if (stop_) return;
            }
            Fiber* f = &e_.fibers[i];
            t_self = f;
            current = &f->state;
            e_.body(e_.closure);
            finish(e_, f);
            {
                std::lock_guard<std::mutex> lk(mu_);
                ++done_;
            }
            cv_.notify_all();
        }
    }

    Exec& e_;
    const unsigned n_;
    std::vector<std::thread> threads_;
    std::mutex mu_;
    std::condition_variable cv_;
    unsigned long long generation_ = 0;
    unsigned done_ = 0;
    bool stop_ = false;
};

void reset_block(Exec& e, const LaunchConfig& cfg, uint3 block_idx, unsigned long long block_linear) {
    const dim3 bd(cfg.block[0], cfg.block[1], cfg.block[2]);
    const unsigned n = bd.x * bd.y * bd.z;
    e.fibers.assign(n, Fiber{});
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = e.fibers[i];
        f.state = ThreadState{{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)}, block_idx, bd,
                              dim3(cfg.grid[0], cfg.grid[1], cfg.grid[2])};
        f.exec = &e;
        f.linear = i;
        f.lane = i % 32;
        f.warp = i / 32;
        f.status = kRunnable;
        f.waiting_at = "";
    }
    e.bar = Group{};
    e.bar.live = (int)n;
    e.warps.assign((n + 31) / 32, Warp{});
    for (unsigned w = 0; w < e.warps.size(); ++w) {
        const unsigned lanes = n - w * 32 < 32 ? n - w * 32 : 32;
        e.warps[w].group.live = (int)lanes;
        e.warps[w].live_mask = lanes == 32 ? ~0u : (1u << lanes) - 1;
    }
    unsigned long long s = cfg.seed ^ (block_linear * 0xd1b54a32d192ed03ull);
    e.rng = splitmix64(s);
    e.block_serial = ++g_block_serial;
    std::memset(g_static_shared, 0xff, g_static_used);
    g_static_used = 0;
    std::memset(g_dynamic_shared, 0xff, cfg.shared_bytes);
}

}  // namespace

unsigned long long warp_op(int kind, unsigned mask, unsigned long long value, int arg, int width) {
    Fiber* f = t_self;
    Exec& e = *f->exec;
    Warp& w = e.warps[f->warp];
    Slot& s = w.slot[f->lane];
    s.kind = kind;
    s.mask = mask;
    s.value = value;
    s.arg = arg;
    s.width = width;
    arrive(e, f, w.group, &w, op_name(kind));
    return s.result;
}

void syncthreads() {
    Fiber* f = t_self;
    arrive(*f->exec, f, f->exec->bar, nullptr, "__syncthreads");
}

unsigned char* dynamic_shared() { return g_dynamic_shared; }

void* static_shared(SharedSite& site, unsigned long size, unsigned long align) {
    Fiber* f = t_self;
    if (!f) {
        fprintf(stderr, "cuda emulation: __shared__ declared outside a kernel (namespace-scope __shared__ is not "
                        "emulated)\n");
        std::abort();
    }
    Exec& e = *f->exec;
    std::unique_lock<std::mutex> lk(e.mu, std::defer_lock);
    if (e.threads()) lk.lock();
    if (site.block != e.block_serial) {
        const size_t a = align < 16 ? 16 : align;
        const size_t offset = (g_static_used + a - 1) / a * a;
        if (offset + size > kStaticSharedBytes) {
            fprintf(stderr, "cuda emulation: the block declares more than %zu bytes of __shared__ memory, which ptxas "
                            "rejects\n", kStaticSharedBytes);
            std::abort();
        }
        site.block = e.block_serial;
        site.offset = offset;
        g_static_used = offset + size;
    }
    return g_static_shared + site.offset;
}

int run_grid(const LaunchConfig& cfg, void (*body)(void*), void* closure, char* err, unsigned long errlen) {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    auto report = [&](const std::string& msg) {
        if (err && errlen) snprintf(err, errlen, "%s", msg.c_str());
        return 1;
    };
    const unsigned long long threads = (unsigned long long)cfg.block[0] * cfg.block[1] * cfg.block[2];
    if (threads == 0 || threads > kMaxThreads || cfg.block[2] > 64)
        return report("block of " + std::to_string(cfg.block[0]) + "x" + std::to_string(cfg.block[1]) + "x" +
                      std::to_string(cfg.block[2]) + " threads: need 1..1024 threads and z <= 64");
    if (cfg.grid[0] == 0 || cfg.grid[1] == 0 || cfg.grid[2] == 0 || cfg.grid[1] > 65535 || cfg.grid[2] > 65535)
        return report("grid dimensions must be positive (y and z at most 65535)");
    if (cfg.shared_bytes > kDynamicSharedBytes)
        return report("dynamic shared memory of " + std::to_string(cfg.shared_bytes) + " bytes exceeds " +
                      std::to_string(kDynamicSharedBytes));
    if (cfg.schedule < kScheduleRandom || cfg.schedule > kScheduleThreads)
        return report("unknown schedule " + std::to_string(cfg.schedule));
    if (cfg.banks && !banks::available())
        return report("bank conflicts cannot be counted in a ThreadSanitizer build, whose runtime owns the hooks");
    if (cfg.banks && cfg.schedule == kScheduleThreads)
        return report("bank conflicts are counted in the fiber schedules only");
    banks::begin(cfg.banks, (unsigned)threads, g_static_shared, kStaticSharedBytes, g_dynamic_shared,
                 cfg.shared_bytes);
    struct EndCounting {
        ~EndCounting() { banks::end(); }
    } end_counting;
    Exec e;
    e.schedule = cfg.schedule;
    e.body = body;
    e.closure = closure;
    std::unique_ptr<BlockThreads> pool;
    if (e.threads()) pool = std::make_unique<BlockThreads>(e, (unsigned)threads);
    unsigned long long block_linear = 0;
    for (unsigned z = 0; z < cfg.grid[2]; ++z) {
        for (unsigned y = 0; y < cfg.grid[1]; ++y) {
            for (unsigned x = 0; x < cfg.grid[0]; ++x, ++block_linear) {
                reset_block(e, cfg, uint3{x, y, z}, block_linear);
                if (pool) {
                    pool->run_block();
                } else {
                    run_fibers(e);
                }
                banks::sync_block();
                if (e.failed)
                    return report("block (" + std::to_string(x) + ", " + std::to_string(y) + ", " +
                                  std::to_string(z) + "): " + e.error);
            }
        }
    }
    return 0;
}

}  // namespace emu
