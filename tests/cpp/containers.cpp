// containers.cpp - a C++ program for LD_PRELOAD runs (scripts/preload-suite.sh): threads,
// std::string, std::vector, std::map, std::unordered_map, std::shared_ptr, objects passed
// between threads through a queue, and exceptions thrown and caught (their objects are
// allocated with __cxa_allocate_exception, i.e. malloc). Its output is a function of its
// arguments only (every thread's work is seeded, the hand-offs are summed in an
// order-independent way), so a run on glibc and a run on scopealloc must print the same lines.
//
// Build: g++ -O2 -pthread -o containers tests/cpp/containers.cpp
// Usage: containers [threads rounds]   (default 4 200)
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

// splitmix64: a seeded, portable generator (std:: distributions differ between libraries).
struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    size_t below(size_t n) { return static_cast<size_t>(next() % n); }
};

uint64_t fnv(const std::string &s, uint64_t h = 1469598103934665603ull) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
}

// A record handed from a producer thread to a consumer thread; owned through shared_ptr by the
// queue, then by the consumer, and sometimes kept by the producer too (shared ownership across
// threads: the last owner, on either side, frees it).
struct Record {
    int producer;
    std::string name;
    std::vector<uint32_t> values;
    std::map<std::string, std::string> attrs;
};

class Queue {
  public:
    void push(std::shared_ptr<Record> r) {
        {
            std::lock_guard<std::mutex> g(m_);
            q_.push_back(std::move(r));
        }
        cv_.notify_one();
    }
    // nullptr when closed and drained
    std::shared_ptr<Record> pop() {
        std::unique_lock<std::mutex> g(m_);
        cv_.wait(g, [&] { return closed_ || !q_.empty(); });
        if (q_.empty()) return nullptr;
        auto r = std::move(q_.front());
        q_.pop_front();
        return r;
    }
    void close() {
        {
            std::lock_guard<std::mutex> g(m_);
            closed_ = true;
        }
        cv_.notify_all();
    }

  private:
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<Record>> q_;
    bool closed_ = false;
};

struct ParseError : std::runtime_error {
    explicit ParseError(const std::string &what) : std::runtime_error(what) {}
};

// Throws for about one value in eight, with a message built on the heap.
uint32_t parse(const std::string &s) {
    if (s.empty() || s[0] == 'x') throw ParseError("bad value '" + s + "' at length " + std::to_string(s.size()));
    return static_cast<uint32_t>(std::stoul(s));
}

struct Result {
    uint64_t hash = 0;       // order-independent: a sum of per-item hashes
    uint64_t items = 0;
    uint64_t exceptions = 0;
};

Result produce(int id, int rounds, Queue &q) {
    Rng rng{static_cast<uint64_t>(id) * 7919 + 1};
    Result res;
    std::vector<std::shared_ptr<Record>> kept;
    std::unordered_map<std::string, std::vector<std::string>> index;
    for (int round = 0; round < rounds; round++) {
        auto r = std::make_shared<Record>();
        r->producer = id;
        r->name = "record-" + std::to_string(id) + "-" + std::to_string(round) + std::string(rng.below(200), 'n');
        size_t n = 1 + rng.below(300);
        for (size_t i = 0; i < n; i++) r->values.push_back(static_cast<uint32_t>(rng.next()));
        for (size_t i = 0, m = rng.below(20); i < m; i++)
            r->attrs["k" + std::to_string(rng.below(50))] = std::string(rng.below(100), static_cast<char>('a' + i % 26));
        // strings that grow, shrink and are parsed, some throwing
        std::string text;
        for (size_t i = 0; i < 50; i++) {
            std::string v = rng.below(8) == 0 ? "x" + std::to_string(i) : std::to_string(rng.below(1000000));
            try {
                res.hash += parse(v);
            } catch (const ParseError &e) {
                res.exceptions++;
                res.hash += fnv(e.what());
            }
            text += v;
            text += ',';
        }
        index[r->name.substr(0, 12)].push_back(text);
        if (index.size() > 64) index.erase(index.begin());
        if (rng.below(4) == 0) kept.push_back(r);  // the producer keeps a share
        if (kept.size() > 32) kept.erase(kept.begin(), kept.begin() + 16);
        q.push(std::move(r));
        res.items++;
    }
    for (const auto &kv : index)
        for (const auto &t : kv.second) res.hash += fnv(t);
    return res;
}

Result consume(Queue &q) {
    Result res;
    std::map<int, std::vector<std::shared_ptr<Record>>> held;
    while (auto r = q.pop()) {
        uint64_t h = fnv(r->name);
        for (uint32_t v : r->values) h = h * 31 + v;
        for (const auto &kv : r->attrs) h += fnv(kv.first + "=" + kv.second);
        res.hash += h;
        res.items++;
        // keep some for a while, then drop them: frees of the producer's objects here
        auto &v = held[r->producer];
        v.push_back(std::move(r));
        if (v.size() > 50) v.clear();
        try {
            if (h % 5 == 0) throw std::out_of_range("record " + std::to_string(h));
        } catch (const std::exception &e) {
            res.exceptions++;
        }
    }
    return res;
}

}  // namespace

int main(int argc, char **argv) {
    int threads = argc > 1 ? std::atoi(argv[1]) : 4;
    int rounds = argc > 2 ? std::atoi(argv[2]) : 200;
    if (threads < 1) threads = 1;
    Queue q;
    std::vector<Result> produced(threads), consumed(threads);
    std::vector<std::thread> consumers, producers;
    for (int i = 0; i < threads; i++) consumers.emplace_back([&, i] { consumed[i] = consume(q); });
    // threads started and joined in waves: thread churn
    for (int wave = 0; wave < 4; wave++) {
        for (int i = 0; i < threads; i++)
            producers.emplace_back([&, i, wave] {
                Result r = produce(i + wave * threads, rounds, q);
                produced[i].hash += r.hash;
                produced[i].items += r.items;
                produced[i].exceptions += r.exceptions;
            });
        for (auto &t : producers) t.join();
        producers.clear();
    }
    q.close();
    for (auto &t : consumers) t.join();
    Result p, c;
    for (const auto &r : produced) p.hash += r.hash, p.items += r.items, p.exceptions += r.exceptions;
    for (const auto &r : consumed) c.hash += r.hash, c.items += r.items, c.exceptions += r.exceptions;
    std::printf("produced %llu items, %llu exceptions, hash %016llx\n", (unsigned long long)p.items,
                (unsigned long long)p.exceptions, (unsigned long long)p.hash);
    std::printf("consumed %llu items, %llu exceptions, hash %016llx\n", (unsigned long long)c.items,
                (unsigned long long)c.exceptions, (unsigned long long)c.hash);
    return p.items == c.items ? 0 : 1;
}
