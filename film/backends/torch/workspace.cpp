// The torch backend's CPU workspace (film/backends/torch/workspace.py builds and loads this file).
//
// A c10::Allocator installed as torch's CPU allocator. Outside a forward it only passes through: every block
// comes from c10::alloc_cpu and goes back through c10::free_cpu, as with torch's default allocator. While a
// forward runs (film_enter .. film_exit), each block of kMinBytes or more is mapped by this allocator, and when
// torch frees it, it is kept for the next block of (nearly) the same size instead of being unmapped. So a
// feature map is faulted in once per image size, not once per layer; glibc's malloc is not touched (the host
// program's settings stay as they are). At the end of a forward the kept blocks it did not use are unmapped
// (the next forward of the same size finds the rest); film_release unmaps every kept block.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <sys/mman.h>

#include <cstddef>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>

namespace {

constexpr size_t kMinBytes = 1 << 20;  // smaller blocks: glibc's heap already reuses them
constexpr size_t kGrain = 1 << 16;     // block sizes are rounded up to this
constexpr size_t kSlackDiv = 8;        // a kept block serves a request up to 1/8 smaller than itself

struct State {
  std::mutex mu;
  std::unordered_map<void*, size_t> live;  // mapped blocks handed to torch -> mapped size
  // mapped blocks torch freed during a forward, by size -> (block, the forward that last freed it)
  std::multimap<size_t, std::pair<void*, long>> kept;
  size_t kept_bytes = 0, live_bytes = 0, peak_bytes = 0, mapped_total = 0;
  long active = 0, hits = 0, maps = 0, generation = 0;

  // Unmap the kept blocks the current forward has not used (caller holds mu): blocks of another image size
  // never match, and would otherwise pile up over a folder of many sizes.
  void drop_stale() {
    for (auto it = kept.begin(); it != kept.end();) {
      if (it->second.second < generation) {
        munmap(it->second.first, it->first);
        kept_bytes -= it->first;
        it = kept.erase(it);
      } else {
        ++it;
      }
    }
  }
};

State& state() {
  static State* s = new State();  // never destroyed: blocks may be freed during interpreter shutdown
  return *s;
}

void report_new(void* p, size_t n) { c10::profiledCPUMemoryReporter().New(p, n); }
void report_delete(void* p) { c10::profiledCPUMemoryReporter().Delete(p); }

void film_delete(void* p) {
  if (p == nullptr) return;
  State& s = state();
  {
    std::lock_guard<std::mutex> g(s.mu);
    auto it = s.live.find(p);
    if (it != s.live.end()) {
      size_t size = it->second;
      s.live.erase(it);
      s.live_bytes -= size;
      report_delete(p);
      if (s.active > 0) {  // during a forward: keep it for the next map of this size
        s.kept.emplace(size, std::make_pair(p, s.generation));
        s.kept_bytes += size;
      } else {
        munmap(p, size);
      }
      return;
    }
  }
  report_delete(p);  // a block of c10::alloc_cpu (passed through, or made before this allocator was installed)
  c10::free_cpu(p);
}

struct WorkspaceAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    State& s = state();
    if (n >= kMinBytes) {
      size_t size = (n + kGrain - 1) / kGrain * kGrain;
      std::unique_lock<std::mutex> g(s.mu);
      if (s.active > 0) {
        void* p = nullptr;
        auto it = s.kept.lower_bound(size);
        if (it != s.kept.end() && it->first - size <= size / kSlackDiv) {
          size = it->first;
          p = it->second.first;
          s.kept.erase(it);
          s.kept_bytes -= size;
          s.hits++;
        } else {
          g.unlock();
          void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
          g.lock();
          if (m != MAP_FAILED) {
            p = m;
            s.maps++;
            s.mapped_total += size;
          }
        }
        if (p != nullptr) {
          s.live.emplace(p, size);
          s.live_bytes += size;
          if (s.live_bytes + s.kept_bytes > s.peak_bytes) s.peak_bytes = s.live_bytes + s.kept_bytes;
          g.unlock();
          report_new(p, n);
          return {p, p, &film_delete, c10::Device(c10::DeviceType::CPU)};
        }
      }
    }
    void* p = c10::alloc_cpu(n);  // raises torch's own out-of-memory error
    report_new(p, n);
    return {p, p, &film_delete, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &film_delete; }

#ifdef FILM_ALLOCATOR_COPY_DATA
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
#endif
};

WorkspaceAllocator* g_allocator = nullptr;

}  // namespace

extern "C" {

// Install as torch's CPU allocator (at torch's default priority); 1 if it is now the CPU allocator.
int film_install() {
  if (g_allocator == nullptr) g_allocator = new WorkspaceAllocator();
  if (c10::GetCPUAllocator() != g_allocator) c10::SetCPUAllocator(g_allocator, 0);
  return c10::GetCPUAllocator() == g_allocator ? 1 : 0;
}

void film_enter() {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  if (s.active++ == 0) s.generation++;
}

// The end of a forward: the kept blocks it did not use go back to the system; those it used stay for the next.
void film_exit() {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  if (s.active > 0 && --s.active == 0) s.drop_stale();
}

// Unmap every kept block (the memory goes back to the system); returns the bytes given back.
long film_release() {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  long freed = static_cast<long>(s.kept_bytes);
  for (auto& kv : s.kept) munmap(kv.second.first, kv.first);
  s.kept.clear();
  s.kept_bytes = 0;
  return freed;
}

// 0 kept bytes, 1 live mapped bytes, 2 peak mapped bytes, 3 reuses, 4 fresh maps, 5 bytes ever mapped,
// 6 forwards running
long film_stat(int i) {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  switch (i) {
    case 0: return static_cast<long>(s.kept_bytes);
    case 1: return static_cast<long>(s.live_bytes);
    case 2: return static_cast<long>(s.peak_bytes);
    case 3: return s.hits;
    case 4: return s.maps;
    case 5: return static_cast<long>(s.mapped_total);
    default: return s.active;
  }
}

}  // extern "C"
