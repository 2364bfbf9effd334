// The C++ side of the gloo plugin: rendezvous, connection and the three
// collectives, each behind a C function that turns every exception into a
// dm_status and one line of text (see gloo_shim.h).
//
// Rendezvous happens in two steps. First each rank writes an "arrived" key
// into the store and polls until every rank's key is there: this is where a
// missing rank is noticed, and we can say how many arrived. Then Gloo's own
// connectFullMesh exchanges addresses (under "<prefix>/gloo") and connects.
//
// Gloo names a lost peer only by address ("Connection closed by peer
// [10.0.0.2]:40119"). So after connecting, every rank publishes the address
// of its end of each pair under "<prefix>/pair/<rank>/<peer>", reads the
// other ends of its own pairs, and failure messages get the rank added:
// by exact address when we connected to the peer's listening socket, else
// by host address (exact when one peer has that address, "one of ranks ..."
// otherwise: ranks on one host share it).
#include "gloo_shim.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/redis_store.h>
#include <gloo/transport/tcp/device.h>

namespace {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

// An error we raise ourselves, with the dm_status it should become.
struct ShimError {
    int code;
    std::string msg;
};

// FileStore keeps check() protected; we need it to count arrivals without
// blocking.
class DmFileStore : public gloo::rendezvous::FileStore {
  public:
    explicit DmFileStore(const std::string &path) : FileStore(path) {}
    bool has(const std::string &key) { return check({key}); }
};

// A store plus a non-blocking "is this key there?" (Store has none).
struct StoreHandle {
    std::unique_ptr<gloo::rendezvous::Store> store;
    std::function<bool(const std::string &)> has;
};

bool starts_with(const std::string &s, const char *prefix)
{
    return s.compare(0, std::strlen(prefix), prefix) == 0;
}

// Gloo's messages start with "[/path/to/file.cc:123] " and may span lines:
// keep the text, on one line.
std::string one_line(const char *what)
{
    std::string s = what ? what : "unknown error";
    for (;;) {
        size_t open = s.find('[');
        size_t close = s.find("] ", open == std::string::npos ? 0 : open);
        if (open == std::string::npos || close == std::string::npos)
            break;
        std::string inside = s.substr(open + 1, close - open - 1);
        if (inside.find(".cc:") == std::string::npos && inside.find(".h:") == std::string::npos)
            break;
        s.erase(open, close - open + 2);
    }
    for (char &c : s)
        if (c == '\n' || c == '\r')
            c = ' ';
    return s;
}

bool mentions_timeout(const std::string &s)
{
    return s.find("Timed out") != std::string::npos || s.find("timed out") != std::string::npos ||
           s.find("Wait timeout") != std::string::npos;
}

std::string seconds_text(double s)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%g s", s);
    return buf;
}

StoreHandle open_store(const std::string &url)
{
    StoreHandle h;
    if (starts_with(url, "file://")) {
        std::string dir = url.substr(7);
        if (dir.empty() || dir[0] != '/')
            throw ShimError{DM_ERR_INVALID, "rendezvous '" + url +
                                                "': a file URL needs an absolute path, "
                                                "e.g. file:///tmp/dmnist-rdzv"};
        // Ranks race to create it; EEXIST is the common, good case.
        if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
            throw ShimError{DM_ERR_IO, "rendezvous directory " + dir +
                                           ": cannot create: " + std::strerror(errno)};
        struct stat st;
        if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
            throw ShimError{DM_ERR_IO, "rendezvous path " + dir + " is not a directory"};
        auto *fs = new DmFileStore(dir);
        h.store.reset(fs);
        h.has = [fs](const std::string &key) { return fs->has(key); };
    } else if (starts_with(url, "redis://")) {
        std::string rest = url.substr(8);
        while (!rest.empty() && rest.back() == '/')
            rest.pop_back();
        std::string host = rest;
        int port = 6379;
        size_t colon = rest.rfind(':');
        if (colon != std::string::npos) {
            host = rest.substr(0, colon);
            char *end = nullptr;
            long p = std::strtol(rest.c_str() + colon + 1, &end, 10);
            if (!end || *end || p <= 0 || p > 65535)
                throw ShimError{DM_ERR_INVALID,
                                "rendezvous '" + url + "': bad port (want redis://HOST:PORT)"};
            port = (int)p;
        }
        if (host.empty())
            throw ShimError{DM_ERR_INVALID,
                            "rendezvous '" + url + "': no host (want redis://HOST:PORT)"};
        gloo::rendezvous::RedisStore *rs;
        try {
            rs = new gloo::rendezvous::RedisStore(host, port);
        } catch (const std::exception &e) {
            throw ShimError{DM_ERR_COMM, "cannot reach redis at " + host + ":" +
                                             std::to_string(port) + ": " + one_line(e.what())};
        }
        h.store.reset(rs);
        h.has = [rs](const std::string &key) { return rs->check({key}); };
    } else {
        throw ShimError{DM_ERR_INVALID, "rendezvous '" + url +
                                            "' is not supported: use file:///DIR or "
                                            "redis://HOST:PORT"};
    }
    return h;
}

std::string arrived_key(const std::string &prefix, int rank)
{
    return prefix + "/arrived/" + std::to_string(rank);
}

std::string this_host()
{
    char name[256] = "";
    if (gethostname(name, sizeof name - 1) != 0)
        return "unknown-host";
    return name;
}

// Step one of the rendezvous: announce ourselves and wait for everyone.
void wait_for_all_ranks(StoreHandle &h, const dm_gloo_setup *s, Clock::time_point deadline)
{
    const std::string prefix = s->prefix;
    if (h.has(arrived_key(prefix, s->rank)))
        throw ShimError{DM_ERR_INVALID,
                        "rendezvous " + std::string(s->rendezvous) + " already holds rank " +
                            std::to_string(s->rank) + " under prefix '" + prefix +
                            "' (an earlier job?): use a fresh directory or another prefix"};
    std::string host = this_host();
    h.store->set(arrived_key(prefix, s->rank), std::vector<char>(host.begin(), host.end()));

    std::vector<bool> seen((size_t)s->size, false);
    int n_seen = 0;
    for (;;) {
        for (int r = 0; r < s->size; r++)
            if (!seen[(size_t)r] && h.has(arrived_key(prefix, r))) {
                seen[(size_t)r] = true;
                n_seen++;
            }
        if (n_seen == s->size)
            return;
        if (Clock::now() > deadline) {
            std::string missing;
            int listed = 0;
            for (int r = 0; r < s->size && listed < 8; r++)
                if (!seen[(size_t)r]) {
                    missing += (listed++ ? ", " : "") + std::to_string(r);
                }
            if (s->size - n_seen > listed)
                missing += ", ...";
            throw ShimError{DM_ERR_TIMEOUT,
                            "rendezvous at " + std::string(s->rendezvous) + " timed out after " +
                                seconds_text(s->timeout_s) + ": " + std::to_string(n_seen) +
                                " of " + std::to_string(s->size) + " ranks arrived (missing " +
                                (s->size - n_seen > 1 ? "ranks " : "rank ") + missing + ")"};
        }
        std::this_thread::sleep_for(Millis(10));
    }
}

// This rank's index among the ranks that wrote the same hostname.
int local_rank_of(StoreHandle &h, const dm_gloo_setup *s)
{
    std::string mine = this_host();
    int local = 0;
    for (int r = 0; r < s->rank; r++) {
        std::vector<char> v = h.store->get(arrived_key(s->prefix, r));
        if (std::string(v.begin(), v.end()) == mine)
            local++;
    }
    return local;
}

} // namespace

struct dm_gloo {
    StoreHandle store;
    std::unique_ptr<gloo::rendezvous::PrefixStore> gloo_store; // refers to store.store
    std::shared_ptr<gloo::transport::Device> device;
    std::shared_ptr<gloo::rendezvous::Context> context;
    Millis timeout{0};
    double timeout_s = 0.0;
    uint32_t tag = 0; // one per collective, the same sequence on every rank
    int rank = -1;
    std::vector<std::string> peer_addr; // [size]: rank r's end of our pair, "[ip]:port"
};

namespace {

// " (rank 3)" or " (one of ranks 1, 3)" for the peer whose address a Gloo
// message names; "" when it names none we know.
std::string peer_ranks(const dm_gloo *g, const std::string &msg)
{
    if (!g)
        return "";
    for (size_t r = 0; r < g->peer_addr.size(); r++) {
        const std::string &a = g->peer_addr[r];
        size_t at = a.empty() ? std::string::npos : msg.find(a);
        if (at != std::string::npos && !std::isdigit((unsigned char)msg[at + a.size()])) // ":6553" is not ":65530"
            return " (rank " + std::to_string(r) + ")";
    }
    // the first "[ip]:port" in the message
    size_t close = msg.find("]:");
    size_t open = close == std::string::npos ? close : msg.rfind('[', close);
    if (open == std::string::npos)
        return "";
    std::string host = msg.substr(open, close - open + 1); // "[ip]"
    std::vector<size_t> same;
    for (size_t r = 0; r < g->peer_addr.size(); r++)
        if (g->peer_addr[r].compare(0, host.size(), host) == 0)
            same.push_back(r);
    if (same.empty())
        return "";
    std::string out = same.size() == 1 ? " (rank " : " (one of ranks ";
    for (size_t k = 0; k < same.size(); k++)
        out += (k ? ", " : "") + std::to_string(same[k]);
    return out + ")";
}

// Run f; turn whatever it throws into a dm_status and "gloo: rank R: ...".
// With g, a message naming a peer's address also names its rank.
template <typename F>
int guarded(dm_error *err, int rank, const std::string &what, F &&f, const dm_gloo *g = nullptr)
{
    std::string msg;
    int code;
    try {
        f();
        return DM_OK;
    } catch (const ShimError &e) {
        code = e.code;
        msg = e.msg;
    } catch (const gloo::IoException &e) {
        msg = one_line(e.what());
        code = mentions_timeout(msg) ? DM_ERR_TIMEOUT : DM_ERR_COMM;
        msg = what + (code == DM_ERR_TIMEOUT ? " timed out: " : " failed: ") + msg + peer_ranks(g, msg);
    } catch (const std::bad_alloc &) {
        code = DM_ERR_NOMEM;
        msg = what + ": out of memory";
    } catch (const std::exception &e) {
        msg = what + " failed: " + one_line(e.what());
        code = mentions_timeout(msg) ? DM_ERR_TIMEOUT : DM_ERR_COMM;
    } catch (...) {
        code = DM_ERR_INTERNAL;
        msg = what + " failed with an unknown C++ exception";
    }
    return dm_fail(err, code, "gloo: rank %d: %s", rank, msg.c_str());
}

std::string pair_key(const std::string &prefix, int owner, int peer)
{
    return prefix + "/pair/" + std::to_string(owner) + "/" + std::to_string(peer);
}

// See the top of the file. Everyone has connected, so the others' keys
// follow at once; wait for them until the rendezvous deadline.
void publish_pair_addresses(dm_gloo *g, const dm_gloo_setup *s, Clock::time_point deadline)
{
    for (int r = 0; r < s->size; r++)
        if (r != s->rank) {
            std::string a = g->context->getPair(r)->address().str();
            g->store.store->set(pair_key(s->prefix, s->rank, r), std::vector<char>(a.begin(), a.end()));
        }
    g->peer_addr.assign((size_t)s->size, "");
    for (int r = 0; r < s->size; r++) {
        if (r == s->rank)
            continue;
        const std::string key = pair_key(s->prefix, r, s->rank);
        while (!g->store.has(key)) {
            if (Clock::now() > deadline)
                throw ShimError{DM_ERR_TIMEOUT, "rendezvous: rank " + std::to_string(r) +
                                                    " connected but did not publish its address in " +
                                                    seconds_text(s->timeout_s)};
            std::this_thread::sleep_for(Millis(2));
        }
        std::vector<char> v = g->store.store->get(key);
        g->peer_addr[(size_t)r].assign(v.begin(), v.end());
    }
}

} // namespace

extern "C" int dm_gloo_connect(const dm_gloo_setup *s, dm_gloo **out, int *local_rank,
                               dm_error *err)
{
    *out = nullptr;
    dm_gloo *g = nullptr;
    int rc = guarded(err, s->rank, "rendezvous", [&] {
        std::unique_ptr<dm_gloo> gp(new dm_gloo);
        gp->rank = s->rank;
        gp->timeout_s = s->timeout_s;
        gp->timeout = Millis((int64_t)(s->timeout_s * 1000.0 + 0.5));
        const auto deadline = Clock::now() + gp->timeout;

        gloo::transport::tcp::attr attr;
        if (s->iface[0] && s->host[0])
            throw ShimError{DM_ERR_INVALID, "set either iface or host, not both"};
        if (s->iface[0])
            attr.iface = s->iface;
        if (s->host[0])
            attr.hostname = s->host;
        try {
            gp->device = gloo::transport::tcp::CreateDevice(attr);
        } catch (const std::exception &e) {
            throw ShimError{DM_ERR_INVALID,
                            std::string("cannot bind ") +
                                (s->iface[0] ? "interface '" + std::string(s->iface) + "'"
                                 : s->host[0] ? "host '" + std::string(s->host) + "'"
                                              : std::string("this host's name")) +
                                ": " + one_line(e.what())};
        }

        gp->store = open_store(s->rendezvous);
        wait_for_all_ranks(gp->store, s, deadline);
        *local_rank = local_rank_of(gp->store, s);

        // Everyone is there: Gloo's own address exchange should be quick,
        // but give it what is left of the timeout (at least a second).
        Millis left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
        gp->context = std::make_shared<gloo::rendezvous::Context>(s->rank, s->size);
        gp->context->setTimeout(left > Millis(1000) ? left : Millis(1000));
        gp->gloo_store.reset(
            new gloo::rendezvous::PrefixStore(std::string(s->prefix) + "/gloo", *gp->store.store));
        gp->context->connectFullMesh(*gp->gloo_store, gp->device);
        gp->context->setTimeout(gp->timeout);
        publish_pair_addresses(gp.get(), s, deadline);
        g = gp.release();
    });
    *out = g;
    return rc;
}

extern "C" int dm_gloo_allreduce_sum(dm_gloo *g, float *buf, size_t n, dm_error *err)
{
    return guarded(err, g->rank, "allreduce of " + std::to_string(n) + " floats", [&] {
        gloo::AllreduceOptions opts(g->context);
        opts.setOutput(buf, n); // output only: the reduction is in place
        opts.setReduceFunction(
            static_cast<void (*)(void *, const void *, const void *, size_t)>(&gloo::sum<float>));
        opts.setTag(g->tag++);
        opts.setTimeout(g->timeout);
        gloo::allreduce(opts);
    }, g);
}

extern "C" int dm_gloo_broadcast(dm_gloo *g, void *buf, size_t bytes, int root, dm_error *err)
{
    return guarded(err, g->rank,
                   "broadcast of " + std::to_string(bytes) + " bytes from rank " +
                       std::to_string(root),
                   [&] {
                       gloo::BroadcastOptions opts(g->context);
                       opts.setOutput(static_cast<uint8_t *>(buf), bytes);
                       opts.setRoot(root);
                       opts.setTag(g->tag++);
                       opts.setTimeout(g->timeout);
                       gloo::broadcast(opts);
                   },
                   g);
}

extern "C" int dm_gloo_barrier(dm_gloo *g, dm_error *err)
{
    return guarded(err, g->rank, "barrier", [&] {
        gloo::BarrierOptions opts(g->context);
        opts.setTag(g->tag++);
        opts.setTimeout(g->timeout);
        gloo::barrier(opts);
    }, g);
}

extern "C" void dm_gloo_close(dm_gloo *g)
{
    try {
        delete g;
    } catch (...) {
        // Destructors closing sockets to a lost peer must not take the process down.
    }
}
