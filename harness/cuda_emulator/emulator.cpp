// The scheduler behind emulator.h. Each CUDA thread of a CTA is a fiber on one OS thread; a pass resumes
// every runnable fiber once, in the order of the schedule, and each runs until it waits at a barrier or
// returns. So the order of threads between two barriers is the schedule's (deterministic), and a missing
// barrier shows up as a read of a value that a thread later in the pass has not written yet.
//
// A fiber starts on its own stack with makecontext/setcontext; after that, switches are _setjmp/_longjmp,
// which, unlike swapcontext, make no system call (that halves the run time). _FORTIFY_SOURCE would
// turn _longjmp into a checked version that refuses to jump to another stack.
#undef _FORTIFY_SOURCE
#include "emulator.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace emu
{
namespace
{

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 << 10;  // a gram_f16 thread needs about 12 KiB (its WMMA fragments)

struct Barrier
{
    int expected = 0, arrived = 0;
    unsigned generation = 0;     // advances each time the last thread arrives
    const char* file = nullptr;  // where the first thread of this generation called it
    int line = 0;
    int any = 0, result = 0;  // __syncthreads_or
};

struct Thread
{
    ucontext_t start;  // the fiber's entry, on its stack
    jmp_buf resume;    // where it yielded
    char* stack = nullptr;
    uint3 index;
    bool started = false, finished = false;
    const Barrier* waiting = nullptr;  // runnable again once waiting->generation != generation
    unsigned generation = 0;
};

Thread threads[kMaxThreads];
jmp_buf scheduler;
Thread* current = nullptr;
Barrier cta_barrier, warp_barriers[kMaxThreads / 32];
uint64_t warp_slots[kMaxThreads];
void (*thread_body)(void*);
void* thread_arg;

unsigned schedule = 0;  // 0: ascending thread order, 1: descending, else a random order per pass (the seed)
uint64_t random_state = 1;
unsigned ctas_run = 0;
std::vector<void*> shared_filled;  // the __shared__ variables already filled in this CTA
unsigned char garbage = 0xff;
bool aborted = false;
volatile sig_atomic_t trapped_signal = 0;  // set by on_signal, reported by run_cta
std::string fault_message;
cudaError_t last_error = cudaSuccess;

uint64_t next_random()
{  // xorshift64: a fixed sequence per seed
    random_state ^= random_state << 13;
    random_state ^= random_state >> 7;
    random_state ^= random_state << 17;
    return random_state;
}

void schedule_order(std::vector<unsigned>& ids, unsigned count)
{
    ids.resize(count);
    std::iota(ids.begin(), ids.end(), 0u);
    if (schedule == 1) std::reverse(ids.begin(), ids.end());
    if (schedule > 1)
        for (unsigned i = count - 1; i > 0 && count > 1; --i) std::swap(ids[i], ids[next_random() % (i + 1)]);
}

unsigned linear_thread()
{
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

// A thread's stack and start context, made once and reused by every launch. Not inlined, because getcontext
// "returns twice" (which never happens here: makecontext replaces the entry point).
__attribute__((noinline)) void make_stack(Thread& th)
{
    const size_t page = sysconf(_SC_PAGESIZE);
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
    {
        std::perror("cuda emulator: mmap");
        std::abort();
    }
    mprotect(p, page, PROT_NONE);  // a guard page: a thread that overflows its stack faults, not its neighbour
    th.stack = static_cast<char*>(p) + page;
    getcontext(&th.start);
    th.start.uc_stack.ss_sp = th.stack;
    th.start.uc_stack.ss_size = kStackBytes;
    th.start.uc_link = nullptr;  // thread_main never returns
}

[[noreturn]] void thread_main()
{
    thread_body(thread_arg);
    current->finished = true;
    _longjmp(scheduler, 1);
}

void yield()
{
    if (_setjmp(current->resume) == 0) _longjmp(scheduler, 1);
}

// A kernel's invalid memory access (SIGSEGV, SIGBUS; a stack overflow hits the guard page) or integer division
// by zero (SIGFPE) ends the launch with a fault, like an illegal-address error on a GPU, instead of killing the
// test process. The handler runs on its own stack and never returns: it jumps back to the scheduler, so the
// signal must stay unblocked (SA_NODEFER). Outside a kernel thread it puts the previous handler back and
// returns, and the instruction faults again under that handler.
constexpr int kTrapped[] = {SIGSEGV, SIGBUS, SIGFPE};
struct sigaction previous_actions[3];
stack_t previous_stack;
char signal_stack[64 << 10];

void restore_signals()
{
    for (int i = 0; i < 3; ++i) sigaction(kTrapped[i], &previous_actions[i], nullptr);
    sigaltstack(&previous_stack, nullptr);
}

void on_signal(int signal)
{
    if (current == nullptr)
    {
        restore_signals();
        return;
    }
    trapped_signal = signal;
    _longjmp(scheduler, 1);
}

void trap_signals()
{
    stack_t stack = {};
    stack.ss_sp = signal_stack;
    stack.ss_size = sizeof signal_stack;
    sigaltstack(&stack, &previous_stack);
    struct sigaction action = {};
    action.sa_handler = on_signal;
    action.sa_flags = SA_ONSTACK | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    for (int i = 0; i < 3; ++i) sigaction(kTrapped[i], &action, &previous_actions[i]);
}

// Not inlined: the scheduler's locals then never live in the frame that _setjmp saves.
__attribute__((noinline)) void resume(Thread& th)
{
    current = &th;
    threadIdx = th.index;
    if (_setjmp(scheduler) != 0) return;  // the thread yielded or returned
    if (th.started) _longjmp(th.resume, 1);
    th.started = true;
    setcontext(&th.start);
}

int wait(Barrier& b, int predicate, const char* file = nullptr, int line = 0)
{
    if (b.arrived == 0)
    {
        b.file = file;
        b.line = line;
    }
    else if (b.line != line || (file != b.file && std::strcmp(file, b.file) != 0))
    {
        fault("threads wait at different __syncthreads (a barrier in divergent code)");
    }
    b.any |= predicate;
    current->waiting = &b;
    current->generation = b.generation;
    if (++b.arrived == b.expected)
    {
        b.arrived = 0;
        b.result = b.any;
        b.any = 0;
        ++b.generation;
    }
    yield();  // the last to arrive too: the next pass resumes them all, in the schedule's order
    return b.result;
}

void set_fault(const std::string& what)
{
    if (!aborted) fault_message = what;
    aborted = true;
}

std::string deadlock_report(unsigned count)
{
    unsigned at_cta = 0, at_warp = 0, returned = 0;
    for (unsigned t = 0; t < count; ++t)
    {
        if (threads[t].finished)
            ++returned;
        else if (threads[t].waiting == &cta_barrier)
            ++at_cta;
        else
            ++at_warp;
    }
    return "deadlock: " + std::to_string(at_cta) + " threads wait at __syncthreads, " + std::to_string(at_warp)
        + " at a warp shuffle, " + std::to_string(returned) + " have returned";
}

void run_cta(dim3 block, unsigned count)
{
    shared_filled.clear();
    static const unsigned char kGarbage[] = {0xff, 0x00, 0xa5};  // NaN / -1, zero, a small negative float
    garbage = kGarbage[(schedule + ctas_run++) % 3];
    cta_barrier = Barrier{static_cast<int>(count)};
    for (unsigned w = 0; w * 32 < count; ++w)
        warp_barriers[w] = Barrier{static_cast<int>(std::min(32u, count - 32 * w))};
    for (unsigned t = 0; t < count; ++t)
    {
        Thread& th = threads[t];
        if (th.stack == nullptr) make_stack(th);
        makecontext(&th.start, thread_main, 0);  // restart at the top of the stack
        th.index = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
        th.started = th.finished = false;
        th.waiting = nullptr;
    }
    std::vector<unsigned> order;
    for (unsigned live = count; live > 0 && !aborted;)
    {
        schedule_order(order, count);
        bool progress = false;
        for (unsigned t : order)
        {
            Thread& th = threads[t];
            if (th.finished || (th.waiting != nullptr && th.waiting->generation == th.generation)) continue;
            th.waiting = nullptr;
            progress = true;
            resume(th);
            current = nullptr;
            if (trapped_signal != 0)
            {
                set_fault(trapped_signal == SIGFPE ? "an arithmetic exception (integer division by zero?) in a kernel"
                                                   : "an invalid memory access in a kernel");
                trapped_signal = 0;
            }
            if (th.finished) --live;
            if (aborted) break;
        }
        if (!progress) set_fault(deadlock_report(count));
    }
}

}  // namespace

void fault(const char* what)
{
    set_fault(what);
    yield();  // never resumed: the scheduler abandons the launch
    std::abort();
}

uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane)
{
    const unsigned t = linear_thread(), warp = t / 32;
    Barrier& b = warp_barriers[warp];
    const unsigned lanes = b.expected == 32 ? ~0u : (1u << b.expected) - 1;
    if ((mask & lanes) != lanes) fault("a shuffle whose mask leaves out threads of the warp");
    if (src_lane < 0 || src_lane >= b.expected) fault("a shuffle from a lane outside the warp");
    warp_slots[t] = value;
    wait(b, 0);
    const uint64_t result = warp_slots[warp * 32 + src_lane];
    wait(b, 0);  // nobody overwrites its slot before every lane has read
    return result;
}

void shared(void* variable, size_t bytes)
{
    if (std::find(shared_filled.begin(), shared_filled.end(), variable) != shared_filled.end()) return;
    std::memset(variable, garbage, bytes);  // the first thread of the CTA to get here, before any use
    shared_filled.push_back(variable);
}

void run_grid(dim3 grid, dim3 block, size_t dynamic_shared, void (*body)(void*), void* arg)
{
    const unsigned long long threads_per_cta = 1ull * block.x * block.y * block.z,
                             ctas = 1ull * grid.x * grid.y * grid.z;
    aborted = false;
    if (dynamic_shared != 0)
        set_fault("dynamic shared memory is not emulated");
    else if (threads_per_cta < 1 || threads_per_cta > kMaxThreads || block.z > 64 || ctas < 1 || grid.y > 65535
        || grid.z > 65535)
        set_fault("invalid launch configuration");
    thread_body = body;
    thread_arg = arg;
    gridDim = grid;
    blockDim = block;
    std::vector<unsigned> order;
    if (!aborted) schedule_order(order, static_cast<unsigned>(ctas));
    trap_signals();
    for (unsigned i = 0; i < order.size() && !aborted; ++i)
    {
        const unsigned c = order[i];
        blockIdx = {c % grid.x, c / grid.x % grid.y, c / (grid.x * grid.y)};
        run_cta(block, static_cast<unsigned>(threads_per_cta));
    }
    restore_signals();
    if (aborted)
    {
        last_error = cudaErrorLaunchFailure;
        std::fprintf(stderr, "cuda emulator: %s\n", fault_message.c_str());
    }
}

}  // namespace emu

cudaError_t cudaGetLastError()
{
    const cudaError_t e = emu::last_error;
    emu::last_error = cudaSuccess;
    return e;
}

int emu::sync_cta(int predicate, const char* file, int line)
{
    return wait(cta_barrier, predicate, file, line);
}

// Controls for the tests (ctypes).
extern "C"
{
    // Thread and CTA order of the following launches (0 ascending, 1 descending, other values: random orders from
    // that seed), and a fresh start: the garbage pattern sequence restarts and the last fault is forgotten.
    __attribute__((visibility("default"))) void emuSetSchedule(unsigned seed)
    {
        emu::schedule = seed;
        emu::random_state = 0x9e3779b97f4a7c15ull * (seed + 1);
        emu::ctas_run = 0;
        emu::fault_message.clear();
        emu::last_error = cudaSuccess;
    }
    // What went wrong in the last failed launch ("" if none since emuSetSchedule).
    __attribute__((visibility("default"))) const char* emuLastFault()
    {
        return emu::fault_message.c_str();
    }
}
