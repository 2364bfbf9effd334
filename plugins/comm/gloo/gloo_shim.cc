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

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdarg>
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
#include <hiredis/hiredis.h>
#include <gloo/transport/tcp/device.h>

namespace
{

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

// An error we raise ourselves, with the dm_status it should become.
struct ShimError {
    int code;
    std::string msg;
};

bool starts_with(const std::string &s, const char *prefix) { return s.compare(0, std::strlen(prefix), prefix) == 0; }

// Gloo's messages start with "[/path/to/file.cc:123] " and may span lines:
// keep the text, on one line.
std::string one_line(const char *what)
{
    std::string s = what ? what : "unknown error";
    for (;;) {
        size_t open = s.find('[');
        size_t close = s.find("] ", open == std::string::npos ? 0 : open);
        if (open == std::string::npos || close == std::string::npos) break;
        std::string inside = s.substr(open + 1, close - open - 1);
        if (inside.find(".cc:") == std::string::npos && inside.find(".h:") == std::string::npos) break;
        s.erase(open, close - open + 2);
    }
    for (char &c : s)
        if (c == '\n' || c == '\r') c = ' ';
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

std::string this_host()
{
    char name[256] = "";
    if (gethostname(name, sizeof name - 1) != 0) return "unknown-host";
    return name;
}

// The rendezvous store. Our own keys (claims, pair addresses) go through
// claim/has/read; Gloo's connectFullMesh gets gloo(). Every operation is
// bounded by the rendezvous deadline: a store that accepts the connection
// and never answers is a timeout naming the store, not a hang.
class Rdzv
{
  public:
    virtual ~Rdzv() {}
    // Create key with value unless it exists, atomically: false when it did.
    virtual bool claim(const std::string &key, const std::string &value) = 0;
    virtual bool has(const std::string &key) = 0;
    virtual std::string read(const std::string &key) = 0;
    virtual gloo::rendezvous::Store &gloo() = 0;
};

std::string timeout_text(double s) { return seconds_text(s) + " (comm.timeout_s, else experiment.timeout_s)"; }

// A directory: one file per key, created with link(), which fails with
// EEXIST atomically and shows readers only complete files.
class FileRdzv : public Rdzv
{
  public:
    FileRdzv(const std::string &dir) : dir_(dir), store_(dir) {}
    bool claim(const std::string &key, const std::string &value) override
    {
        static unsigned counter;
        std::string tmp = dir_ + "/.dm-tmp." + std::to_string(getpid()) + "." + std::to_string(counter++);
        int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0)
            throw ShimError{DM_ERR_IO,
                            "rendezvous directory " + dir_ + ": cannot create " + tmp + ": " + std::strerror(errno)};
        ssize_t wrote = write(fd, value.data(), value.size());
        int e = errno;
        close(fd);
        if (wrote != (ssize_t)value.size()) {
            unlink(tmp.c_str());
            throw ShimError{DM_ERR_IO,
                            "rendezvous directory " + dir_ + ": cannot write " + tmp + ": " +
                                (wrote < 0 ? std::strerror(e) : "short write")};
        }
        int rc = link(tmp.c_str(), path(key).c_str());
        e = errno;
        unlink(tmp.c_str());
        if (rc == 0) return true;
        if (e == EEXIST) return false;
        throw ShimError{DM_ERR_IO,
                        "rendezvous directory " + dir_ + ": cannot create " + path(key) + ": " + std::strerror(e)};
    }
    bool has(const std::string &key) override { return access(path(key).c_str(), F_OK) == 0; }
    std::string read(const std::string &key) override
    {
        std::string out;
        int fd = open(path(key).c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw ShimError{DM_ERR_IO, "rendezvous: cannot read " + path(key) + ": " + std::strerror(errno)};
        char buf[512];
        ssize_t got;
        while ((got = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, (size_t)got);
        close(fd);
        return out;
    }
    gloo::rendezvous::Store &gloo() override { return store_; }

  private:
    // "dm." + the key with every byte outside [A-Za-z0-9._-] as %XX: one
    // flat file name, apart from Gloo's own files.
    std::string path(const std::string &key) const
    {
        std::string p = dir_ + "/dm.";
        for (unsigned char c : key) {
            if (std::isalnum(c) || c == '.' || c == '_' || c == '-') {
                p += (char)c;
            } else {
                char hex[4];
                snprintf(hex, sizeof hex, "%%%02X", c);
                p += hex;
            }
        }
        return p;
    }
    std::string dir_;
    gloo::rendezvous::FileStore store_; // bounded: Gloo waits with the context's timeout
};

// Redis through our own hiredis connection: Gloo's RedisStore connects
// without a timeout and blocks for ever on a server that never answers.
class RedisRdzv : public Rdzv, public gloo::rendezvous::Store
{
  public:
    RedisRdzv(const std::string &host, int port, const std::string &url, double timeout_s, Clock::time_point deadline)
        : url_(url), timeout_s_(timeout_s), deadline_(deadline)
    {
        ctx_ = redisConnectWithTimeout(host.c_str(), port, remaining());
        if (!ctx_ || ctx_->err) {
            std::string why = ctx_ ? ctx_->errstr : "out of memory";
            bool slow = ctx_ && Clock::now() >= deadline_ - Millis(5);
            if (ctx_) redisFree(ctx_);
            ctx_ = nullptr;
            if (slow)
                throw ShimError{DM_ERR_TIMEOUT,
                                "rendezvous " + url_ + ": redis did not accept a connection within " +
                                    timeout_text(timeout_s_)};
            throw ShimError{DM_ERR_COMM, "rendezvous " + url_ + ": cannot reach redis: " + why};
        }
    }
    ~RedisRdzv() override
    {
        if (ctx_) redisFree(ctx_);
    }
    bool claim(const std::string &key, const std::string &value) override
    {
        return command_int("SETNX %b %b", key.data(), key.size(), value.data(), value.size()) == 1;
    }
    bool has(const std::string &key) override { return command_int("EXISTS %b", key.data(), key.size()) > 0; }
    std::string read(const std::string &key) override
    {
        redisReply *r = command("GET %b", key.data(), key.size());
        std::string out = r->type == REDIS_REPLY_STRING ? std::string(r->str, (size_t)r->len) : "";
        bool ok = r->type == REDIS_REPLY_STRING;
        freeReplyObject(r);
        if (!ok) throw ShimError{DM_ERR_COMM, "rendezvous " + url_ + ": key " + key + " has no value"};
        return out;
    }
    gloo::rendezvous::Store &gloo() override { return *this; }

    // gloo::rendezvous::Store, for connectFullMesh (through a PrefixStore)
    void set(const std::string &key, const std::vector<char> &data) override
    {
        if (!claim(key, std::string(data.begin(), data.end())))
            throw ShimError{DM_ERR_INVALID,
                            "rendezvous " + url_ + " already holds key " + key +
                                " (another job?): set another comm.prefix"};
    }
    std::vector<char> get(const std::string &key) override
    {
        wait({key}, std::chrono::duration_cast<Millis>(deadline_ - Clock::now()));
        std::string v = read(key);
        return std::vector<char>(v.begin(), v.end());
    }
    void wait(const std::vector<std::string> &keys) override { wait(keys, Store::kDefaultTimeout); }
    void wait(const std::vector<std::string> &keys, const std::chrono::milliseconds &timeout) override
    {
        auto until = std::min(deadline_, Clock::now() + timeout);
        for (const std::string &k : keys)
            while (!has(k)) {
                if (Clock::now() >= until)
                    throw ShimError{DM_ERR_TIMEOUT,
                                    "rendezvous " + url_ + ": key " + k + " did not appear within " +
                                        timeout_text(timeout_s_)};
                std::this_thread::sleep_for(Millis(5));
            }
    }

  private:
    struct timeval remaining() const
    {
        auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline_ - Clock::now()).count();
        if (left < 10000) left = 10000; // a last try of 10 ms
        struct timeval tv;
        tv.tv_sec = (time_t)(left / 1000000);
        tv.tv_usec = (suseconds_t)(left % 1000000);
        return tv;
    }
    redisReply *command(const char *fmt, ...)
    {
        if (!ctx_) throw ShimError{DM_ERR_COMM, "rendezvous " + url_ + ": the connection to redis failed earlier"};
        redisSetTimeout(ctx_, remaining());
        va_list ap;
        va_start(ap, fmt);
        void *r = redisvCommand(ctx_, fmt, ap);
        va_end(ap);
        if (!r) {
            std::string why = ctx_->errstr;
            int io_errno = errno;
            redisFree(ctx_);
            ctx_ = nullptr; // unusable after an error
            if (io_errno == EAGAIN || io_errno == EWOULDBLOCK || Clock::now() >= deadline_ - Millis(5))
                throw ShimError{DM_ERR_TIMEOUT,
                                "rendezvous " + url_ + ": redis did not answer within " + timeout_text(timeout_s_)};
            throw ShimError{DM_ERR_COMM, "rendezvous " + url_ + ": redis: " + why};
        }
        redisReply *reply = static_cast<redisReply *>(r);
        if (reply->type == REDIS_REPLY_ERROR) {
            std::string why(reply->str, (size_t)reply->len);
            freeReplyObject(reply);
            throw ShimError{DM_ERR_COMM, "rendezvous " + url_ + ": redis answered: " + why};
        }
        return reply;
    }
    long long command_int(const char *fmt, const void *a, size_t an, const void *b = nullptr, size_t bn = 0)
    {
        redisReply *r = b ? command(fmt, a, an, b, bn) : command(fmt, a, an);
        long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
        freeReplyObject(r);
        if (v < 0) throw ShimError{DM_ERR_COMM, "rendezvous " + url_ + ": redis gave an unexpected answer"};
        return v;
    }
    std::string url_;
    double timeout_s_;
    Clock::time_point deadline_;
    redisContext *ctx_ = nullptr;
};

std::unique_ptr<Rdzv> open_store(const std::string &url, double timeout_s, Clock::time_point deadline)
{
    if (starts_with(url, "file://")) {
        std::string dir = url.substr(7);
        if (dir.empty() || dir[0] != '/')
            throw ShimError{DM_ERR_INVALID,
                            "rendezvous '" + url +
                                "': a file URL needs an absolute path, "
                                "e.g. file:///tmp/dmnist-rdzv"};
        // Ranks race to create it; EEXIST is the common, good case.
        if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
            throw ShimError{DM_ERR_IO, "rendezvous directory " + dir + ": cannot create: " + std::strerror(errno)};
        struct stat st;
        if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
            throw ShimError{DM_ERR_IO, "rendezvous path " + dir + " is not a directory"};
        return std::unique_ptr<Rdzv>(new FileRdzv(dir));
    }
    if (starts_with(url, "redis://")) {
        std::string rest = url.substr(8);
        while (!rest.empty() && rest.back() == '/') rest.pop_back();
        std::string host = rest;
        int port = 6379;
        size_t colon = rest.rfind(':');
        if (colon != std::string::npos) {
            host = rest.substr(0, colon);
            char *end = nullptr;
            long p = std::strtol(rest.c_str() + colon + 1, &end, 10);
            if (!end || *end || p <= 0 || p > 65535)
                throw ShimError{DM_ERR_INVALID, "rendezvous '" + url + "': bad port (want redis://HOST:PORT)"};
            port = (int)p;
        }
        if (host.empty()) throw ShimError{DM_ERR_INVALID, "rendezvous '" + url + "': no host (want redis://HOST:PORT)"};
        return std::unique_ptr<Rdzv>(new RedisRdzv(host, port, url, timeout_s, deadline));
    }
    throw ShimError{DM_ERR_INVALID,
                    "rendezvous '" + url +
                        "' is not supported: use file:///DIR or "
                        "redis://HOST:PORT"};
}

// The first address of `name` this process can bind, as numeric text, or ""
// when the name does not resolve or nothing binds. Gloo does this lookup
// itself when given a name, and on a name that does not resolve it crashes
// (SIGSEGV inside CreateDeviceAttr) instead of throwing: so Gloo only ever
// gets numeric addresses from us.
std::string bindable_address(const std::string &name)
{
    struct addrinfo hints;
    std::memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    struct addrinfo *res = nullptr;
    if (getaddrinfo(name.c_str(), nullptr, &hints, &res) != 0 || !res) return "";
    std::string out;
    for (struct addrinfo *a = res; a && out.empty(); a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0) {
            char host[NI_MAXHOST];
            if (getnameinfo(a->ai_addr, a->ai_addrlen, host, sizeof host, nullptr, 0, NI_NUMERICHOST) == 0) out = host;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return out;
}

bool interface_has_address(const std::string &iface)
{
    struct ifaddrs *ifs = nullptr;
    if (getifaddrs(&ifs) != 0) return false;
    bool found = false;
    for (struct ifaddrs *i = ifs; i && !found; i = i->ifa_next)
        found = i->ifa_name && iface == i->ifa_name && i->ifa_addr &&
            (i->ifa_addr->sa_family == AF_INET || i->ifa_addr->sa_family == AF_INET6);
    freeifaddrs(ifs);
    return found;
}

// What Gloo binds: comm.iface, comm.host (resolved here), else this host's
// name; when that does not resolve and every rank runs on this host, the
// loopback address.
gloo::transport::tcp::attr bind_attr(const dm_gloo_setup *s)
{
    gloo::transport::tcp::attr attr;
    if (s->iface[0] && s->host[0]) throw ShimError{DM_ERR_INVALID, "set either comm.iface or comm.host, not both"};
    if (s->iface[0]) {
        if (!interface_has_address(s->iface))
            throw ShimError{DM_ERR_INVALID,
                            "comm.iface '" + std::string(s->iface) + "': no such network interface with an IP address"};
        attr.iface = s->iface;
        return attr;
    }
    if (s->host[0]) {
        std::string a = bindable_address(s->host);
        if (a.empty())
            throw ShimError{DM_ERR_INVALID,
                            "comm.host '" + std::string(s->host) + "' does not resolve to an address of this machine"};
        attr.hostname = a;
        return attr;
    }
    std::string host = this_host();
    std::string a = bindable_address(host);
    if (a.empty() && s->single_host) a = "127.0.0.1"; // all ranks here: loopback reaches them all
    if (a.empty())
        throw ShimError{DM_ERR_INVALID,
                        "this host's name '" + host +
                            "' does not resolve to an address (no /etc/hosts "
                            "entry?): set comm.iface (e.g. eth0) or comm.host "
                            "(this machine's address)"};
    attr.hostname = a;
    return attr;
}

std::string claim_key(const std::string &ns, int rank) { return ns + "/claim/" + std::to_string(rank); }

// A claim's value: "host\nfingerprint\nworld size\npid".
struct Claim {
    std::string host, fingerprint, size, pid;
};

Claim parse_claim(const std::string &v)
{
    Claim c;
    std::string *f[] = {&c.host, &c.fingerprint, &c.size, &c.pid};
    size_t k = 0;
    for (char ch : v) {
        if (ch == '\n') {
            if (++k == 4) break;
        } else {
            *f[k] += ch;
        }
    }
    return c;
}

const char kWhy[] = "(different config: model, optimizer, data, seed, world size or step budget; or another "
                    "job's rank)";

// Step one of the rendezvous: claim our rank (atomically: two processes
// never both hold one) and wait for everyone, refusing at once a rank whose
// claim shows another job.
void wait_for_all_ranks(Rdzv &st, const dm_gloo_setup *s, const std::string &ns, Clock::time_point deadline)
{
    const std::string rdzv = s->rendezvous;
    const std::string where = rdzv + " under prefix '" + ns + "'";
    std::string host = this_host();
    std::string mine =
        host + "\n" + s->fingerprint + "\n" + std::to_string(s->size) + "\n" + std::to_string((long)getpid());
    if (!st.claim(claim_key(ns, s->rank), mine)) {
        Claim other = parse_claim(st.read(claim_key(ns, s->rank)));
        st.claim(ns + "/collision", host); // tells that job's waiting ranks too
        throw ShimError{DM_ERR_INVALID,
                        "rendezvous " + where + " already holds rank " + std::to_string(s->rank) + " (process " +
                            other.pid + " on " + other.host +
                            (other.fingerprint.empty() ? "" : ", job fingerprint " + other.fingerprint) +
                            "): another job, or an earlier one: use a fresh directory, another comm.prefix "
                            "or DMNIST_JOB_ID"};
    }

    std::vector<bool> seen((size_t)s->size, false);
    seen[(size_t)s->rank] = true;
    int n_seen = 1;
    for (;;) {
        for (int r = 0; r < s->size; r++)
            if (!seen[(size_t)r] && st.has(claim_key(ns, r))) {
                seen[(size_t)r] = true;
                n_seen++;
                Claim c = parse_claim(st.read(claim_key(ns, r)));
                if (s->fingerprint[0] && !c.fingerprint.empty() && c.fingerprint != s->fingerprint)
                    throw ShimError{DM_ERR_INVALID,
                                    "job fingerprint " + std::string(s->fingerprint) + " differs from rank " +
                                        std::to_string(r) + "'s " + c.fingerprint + " " + kWhy};
            }
        if (n_seen == s->size) return;
        if (st.has(ns + "/collision"))
            throw ShimError{DM_ERR_INVALID,
                            "another process claimed a rank already held in rendezvous " + where +
                                ": two jobs share it; use a fresh directory, another "
                                "comm.prefix or DMNIST_JOB_ID per job"};
        if (Clock::now() > deadline) {
            std::string missing;
            int listed = 0;
            for (int r = 0; r < s->size && listed < 8; r++)
                if (!seen[(size_t)r]) { missing += (listed++ ? ", " : "") + std::to_string(r); }
            if (s->size - n_seen > listed) missing += ", ...";
            throw ShimError{DM_ERR_TIMEOUT,
                            "rendezvous at " + rdzv + " timed out after " + timeout_text(s->timeout_s) + ": " +
                                std::to_string(n_seen) + " of " + std::to_string(s->size) + " ranks arrived (missing " +
                                (s->size - n_seen > 1 ? "ranks " : "rank ") + missing + ")"};
        }
        std::this_thread::sleep_for(Millis(10));
    }
}

// This rank's index among the ranks that wrote the same hostname.
int local_rank_of(Rdzv &st, const dm_gloo_setup *s, const std::string &ns)
{
    std::string mine = this_host();
    int local = 0;
    for (int r = 0; r < s->rank; r++)
        if (parse_claim(st.read(claim_key(ns, r))).host == mine) local++;
    return local;
}

} // namespace

struct dm_gloo {
    std::unique_ptr<Rdzv> store;
    std::unique_ptr<gloo::rendezvous::PrefixStore> gloo_store; // refers to store->gloo()
    std::shared_ptr<gloo::transport::Device> device;
    std::shared_ptr<gloo::rendezvous::Context> context;
    Millis timeout{0};
    double timeout_s = 0.0;
    uint32_t tag = 0; // one per collective, the same sequence on every rank
    int rank = -1;
    std::vector<std::string> peer_addr; // [size]: rank r's end of our pair, "[ip]:port"
};

namespace
{

// " (rank 3)" or " (one of ranks 1, 3)" for the peer whose address a Gloo
// message names; "" when it names none we know.
std::string peer_ranks(const dm_gloo *g, const std::string &msg)
{
    if (!g) return "";
    for (size_t r = 0; r < g->peer_addr.size(); r++) {
        const std::string &a = g->peer_addr[r];
        size_t at = a.empty() ? std::string::npos : msg.find(a);
        if (at != std::string::npos && !std::isdigit((unsigned char)msg[at + a.size()])) // ":6553" is not ":65530"
            return " (rank " + std::to_string(r) + ")";
    }
    // the first "[ip]:port" in the message
    size_t close = msg.find("]:");
    size_t open = close == std::string::npos ? close : msg.rfind('[', close);
    if (open == std::string::npos) return "";
    std::string host = msg.substr(open, close - open + 1); // "[ip]"
    std::vector<size_t> same;
    for (size_t r = 0; r < g->peer_addr.size(); r++)
        if (g->peer_addr[r].compare(0, host.size(), host) == 0) same.push_back(r);
    if (same.empty()) return "";
    std::string out = same.size() == 1 ? " (rank " : " (one of ranks ";
    for (size_t k = 0; k < same.size(); k++) out += (k ? ", " : "") + std::to_string(same[k]);
    return out + ")";
}

// Run f; turn whatever it throws into a dm_status and "gloo: rank R: ...".
// With g, a message naming a peer's address also names its rank.
template <typename F> int guarded(dm_error *err, int rank, const std::string &what, F &&f, const dm_gloo *g = nullptr)
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
void publish_pair_addresses(dm_gloo *g, const dm_gloo_setup *s, const std::string &ns, Clock::time_point deadline)
{
    for (int r = 0; r < s->size; r++)
        if (r != s->rank) g->store->claim(pair_key(ns, s->rank, r), g->context->getPair(r)->address().str());
    g->peer_addr.assign((size_t)s->size, "");
    for (int r = 0; r < s->size; r++) {
        if (r == s->rank) continue;
        const std::string key = pair_key(ns, r, s->rank);
        while (!g->store->has(key)) {
            if (Clock::now() > deadline)
                throw ShimError{DM_ERR_TIMEOUT,
                                "rendezvous: rank " + std::to_string(r) +
                                    " connected but did not publish its address in " + timeout_text(s->timeout_s)};
            std::this_thread::sleep_for(Millis(2));
        }
        g->peer_addr[(size_t)r] = g->store->read(key);
    }
}

} // namespace

extern "C" int dm_gloo_connect(const dm_gloo_setup *s, dm_gloo **out, int *local_rank, dm_error *err)
{
    *out = nullptr;
    dm_gloo *g = nullptr;
    int rc = guarded(err, s->rank, "rendezvous", [&] {
        std::unique_ptr<dm_gloo> gp(new dm_gloo);
        gp->rank = s->rank;
        gp->timeout_s = s->timeout_s;
        gp->timeout = Millis((int64_t)(s->timeout_s * 1000.0 + 0.5));
        const auto deadline = Clock::now() + gp->timeout;

        gloo::transport::tcp::attr attr = bind_attr(s);
        try {
            gp->device = gloo::transport::tcp::CreateDevice(attr);
        } catch (const std::exception &e) {
            throw ShimError{
                DM_ERR_INVALID,
                "cannot bind " +
                    (s->iface[0] ? "interface '" + std::string(s->iface) + "'" : "address " + attr.hostname) + ": " +
                    one_line(e.what())};
        }

        // Every key of this job lives under <prefix>/job.<id> (the launcher's
        // job id) or <prefix>/nojob: jobs with ids never meet in one store.
        const std::string ns =
            std::string(s->prefix) + "/" + (s->job_id[0] ? "job." + std::string(s->job_id) : std::string("nojob"));
        gp->store = open_store(s->rendezvous, s->timeout_s, deadline);
        wait_for_all_ranks(*gp->store, s, ns, deadline);
        *local_rank = local_rank_of(*gp->store, s, ns);

        // Everyone is there: Gloo's own address exchange should be quick,
        // but give it what is left of the timeout (at least a second).
        Millis left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
        gp->context = std::make_shared<gloo::rendezvous::Context>(s->rank, s->size);
        gp->context->setTimeout(left > Millis(1000) ? left : Millis(1000));
        gp->gloo_store.reset(new gloo::rendezvous::PrefixStore(ns + "/gloo", gp->store->gloo()));
        gp->context->connectFullMesh(*gp->gloo_store, gp->device);
        gp->context->setTimeout(gp->timeout);
        publish_pair_addresses(gp.get(), s, ns, deadline + Millis(1000));
        g = gp.release();
    });
    *out = g;
    return rc;
}

extern "C" int dm_gloo_allreduce_sum(dm_gloo *g, float *buf, size_t n, dm_error *err)
{
    return guarded(
        err, g->rank, "allreduce of " + std::to_string(n) + " floats",
        [&] {
            gloo::AllreduceOptions opts(g->context);
            opts.setOutput(buf, n); // output only: the reduction is in place
            opts.setReduceFunction(
                static_cast<void (*)(void *, const void *, const void *, size_t)>(&gloo::sum<float>));
            opts.setTag(g->tag++);
            opts.setTimeout(g->timeout);
            gloo::allreduce(opts);
        },
        g);
}

extern "C" int dm_gloo_broadcast(dm_gloo *g, void *buf, size_t bytes, int root, dm_error *err)
{
    return guarded(
        err, g->rank, "broadcast of " + std::to_string(bytes) + " bytes from rank " + std::to_string(root),
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
    return guarded(
        err, g->rank, "barrier",
        [&] {
            gloo::BarrierOptions opts(g->context);
            opts.setTag(g->tag++);
            opts.setTimeout(g->timeout);
            gloo::barrier(opts);
        },
        g);
}

extern "C" void dm_gloo_close(dm_gloo *g)
{
    try {
        delete g;
    } catch (...) {
        // Destructors closing sockets to a lost peer must not take the process down.
    }
}
