/* dmnist-lab-link: delay and loss for the fault lab's links, without netem.
 *
 *   dmnist-lab-link [--queue N] [--delay-us US] [--loss-ppm PPM] [--control FILE]
 *
 * The kernels the lab runs on may lack sch_netem (the Firecracker kernels
 * of our machines do: only tbf, htb and pfifo). This daemon does netem's
 * delay and loss in user space through NFQUEUE: an iptables rule in a host
 * namespace hands every IPv4 packet that host sends (POSTROUTING -o its
 * veth) to queue N, and the daemon gives each packet its verdict later:
 *   loss   with probability PPM / 1e6 a packet is dropped (NF_DROP) at once;
 *   delay  the others are accepted (NF_ACCEPT) DELAY_US after they arrived,
 *          in arrival order (the queue is FIFO), with one batch verdict for
 *          every packet that is due.
 * Only metadata crosses to user space (NFQNL_COPY_META) and GSO packets
 * stay whole (NFQA_CFG_F_GSO), so the cost is one netlink message per
 * (up to 64 KB) packet plus one per wake-up. A dropped packet is dropped
 * after it left the sender's stack, so TCP sees a real loss.
 * SIGHUP rereads "DELAY_US LOSS_PPM" from the control file (scripts/lab
 * shape writes it); SIGTERM/SIGINT accept what is held and exit. If the
 * daemon dies, the rule's --queue-bypass lets packets through undelayed.
 * Exit codes: 0 after SIGTERM, 1 a netlink error, 2 bad command line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RING (1u << 20) /* packets held at most (ids + due times) */

static volatile sig_atomic_t reload, quit;
static void on_hup(int s)
{
    (void)s;
    reload = 1;
}
static void on_term(int s)
{
    (void)s;
    quit = 1;
}

static int64_t now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

/* xorshift64*: loss decisions need no quality beyond "not periodic". */
static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd_ppm(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32) % 1000000u;
}

static int fd;
static uint16_t queue;
static uint32_t seq;

/* One nfnetlink message: header, nfgenmsg, then attributes added with put(). */
typedef struct msg {
    char buf[256];
    struct nlmsghdr *nh;
} msg;

static void msg_init(msg *m, uint16_t type)
{
    memset(m->buf, 0, sizeof m->buf);
    m->nh = (struct nlmsghdr *)m->buf;
    m->nh->nlmsg_len = NLMSG_LENGTH(sizeof(struct nfgenmsg));
    m->nh->nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | type;
    m->nh->nlmsg_flags = NLM_F_REQUEST;
    m->nh->nlmsg_seq = ++seq;
    struct nfgenmsg *g = NLMSG_DATA(m->nh);
    g->nfgen_family = AF_UNSPEC;
    g->version = NFNETLINK_V0;
    g->res_id = htons(queue);
}

static void put(msg *m, uint16_t type, const void *data, size_t len)
{
    struct nlattr *a = (struct nlattr *)(m->buf + NLMSG_ALIGN(m->nh->nlmsg_len));
    a->nla_type = type;
    a->nla_len = (uint16_t)(NLA_HDRLEN + len);
    memcpy((char *)a + NLA_HDRLEN, data, len);
    m->nh->nlmsg_len = NLMSG_ALIGN(m->nh->nlmsg_len) + NLA_ALIGN(a->nla_len);
}

static int send_msg(msg *m, int ack)
{
    struct sockaddr_nl to = {.nl_family = AF_NETLINK};
    if (ack) m->nh->nlmsg_flags |= NLM_F_ACK;
    if (sendto(fd, m->buf, m->nh->nlmsg_len, 0, (struct sockaddr *)&to, sizeof to) < 0) return -1;
    if (!ack) return 0;
    char buf[512];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) return -1;
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    if (h->nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *e = NLMSG_DATA(h);
        if (e->error) {
            errno = -e->error;
            return -1;
        }
    }
    return 0;
}

static int verdict(uint16_t type, uint32_t id, uint32_t v)
{
    msg m;
    msg_init(&m, type);
    struct nfqnl_msg_verdict_hdr vh = {.verdict = htonl(v), .id = htonl(id)};
    put(&m, NFQA_VERDICT_HDR, &vh, sizeof vh);
    return send_msg(&m, 0);
}

static int64_t delay_us;
static uint32_t loss_ppm;
static const char *control;

static void read_control(void)
{
    FILE *f = fopen(control, "r");
    long long d;
    unsigned long l;
    if (!f) {
        fprintf(stderr, "dmnist-lab-link: cannot read %s: %s\n", control, strerror(errno));
        return;
    }
    if (fscanf(f, "%lld %lu", &d, &l) == 2 && d >= 0 && l <= 1000000) {
        delay_us = d;
        loss_ppm = (uint32_t)l;
        fprintf(stderr, "dmnist-lab-link: queue %u: delay %lld us, loss %lu ppm\n", queue, d, l);
    } else {
        fprintf(stderr, "dmnist-lab-link: %s: expected \"DELAY_US LOSS_PPM\"\n", control);
    }
    fclose(f);
}

static uint32_t ids[RING];
static int64_t due[RING];
static size_t head, tail; /* held packets are [head, tail) mod RING */

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "usage: dmnist-lab-link [--queue N] [--delay-us US] [--loss-ppm PPM] [--control FILE]\n");
            return 2;
        }
        if (!strcmp(a, "--queue")) queue = (uint16_t)atoi(v);
        else if (!strcmp(a, "--delay-us")) delay_us = atoll(v);
        else if (!strcmp(a, "--loss-ppm")) loss_ppm = (uint32_t)atol(v);
        else if (!strcmp(a, "--control")) control = v;
        else {
            fprintf(stderr, "dmnist-lab-link: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (delay_us < 0 || loss_ppm > 1000000) {
        fprintf(stderr, "dmnist-lab-link: delay must be >= 0 and loss at most 1000000 ppm\n");
        return 2;
    }
    if (control) read_control();
    rng_state ^= (uint64_t)getpid() << 17 ^ (uint64_t)now_us();

    struct sigaction sa = {.sa_handler = on_hup};
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    struct sockaddr_nl me = {.nl_family = AF_NETLINK};
    if (fd < 0 || bind(fd, (struct sockaddr *)&me, sizeof me) < 0) {
        perror("dmnist-lab-link: netlink socket");
        return 1;
    }
    int big = 32 << 20, one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);

    msg m;
    msg_init(&m, NFQNL_MSG_CONFIG);
    struct nfqnl_msg_config_cmd cmd = {.command = NFQNL_CFG_CMD_BIND, .pf = htons(AF_INET)};
    put(&m, NFQA_CFG_CMD, &cmd, sizeof cmd);
    if (send_msg(&m, 1) < 0) {
        fprintf(stderr, "dmnist-lab-link: binding queue %u: %s\n", queue, strerror(errno));
        return 1;
    }
    msg_init(&m, NFQNL_MSG_CONFIG);
    struct nfqnl_msg_config_params p = {.copy_range = htonl(0), .copy_mode = NFQNL_COPY_META};
    put(&m, NFQA_CFG_PARAMS, &p, sizeof p);
    uint32_t maxlen = htonl(RING / 2);
    put(&m, NFQA_CFG_QUEUE_MAXLEN, &maxlen, sizeof maxlen);
    uint32_t flags = htonl(NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN);
    put(&m, NFQA_CFG_FLAGS, &flags, sizeof flags);
    put(&m, NFQA_CFG_MASK, &flags, sizeof flags);
    if (send_msg(&m, 1) < 0) {
        fprintf(stderr, "dmnist-lab-link: configuring queue %u: %s\n", queue, strerror(errno));
        return 1;
    }
    fprintf(stderr, "dmnist-lab-link: queue %u bound: delay %lld us, loss %u ppm\n", queue, (long long)delay_us,
            loss_ppm);

    static char buf[1 << 16];
    while (!quit) {
        if (reload) {
            reload = 0;
            if (control) read_control();
        }
        int64_t t = now_us();
        struct timespec ts, *wait = NULL; /* sleep until the oldest packet is due */
        if (head != tail) {
            int64_t d = due[head % RING] - t;
            if (d < 0) d = 0;
            ts.tv_sec = d / 1000000;
            ts.tv_nsec = d % 1000000 * 1000;
            wait = &ts;
        }
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int r = ppoll(&pf, 1, wait, NULL);
        if (r < 0 && errno != EINTR) {
            perror("dmnist-lab-link: poll");
            return 1;
        }
        if (r > 0) {
            for (;;) {
                ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
                if (n < 0) {
                    if (errno == EAGAIN || errno == EINTR || errno == ENOBUFS) break;
                    perror("dmnist-lab-link: recv");
                    return 1;
                }
                int64_t arrived = now_us();
                for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
                    if ((h->nlmsg_type & 0xff) != NFQNL_MSG_PACKET) continue;
                    struct nlattr *a = (struct nlattr *)((char *)NLMSG_DATA(h) + NLMSG_ALIGN(sizeof(struct nfgenmsg)));
                    int left = (int)h->nlmsg_len - NLMSG_LENGTH(NLMSG_ALIGN(sizeof(struct nfgenmsg)));
                    while (left >= NLA_HDRLEN && a->nla_len >= NLA_HDRLEN && a->nla_len <= left) {
                        if ((a->nla_type & NLA_TYPE_MASK) == NFQA_PACKET_HDR) {
                            struct nfqnl_msg_packet_hdr *ph = (void *)((char *)a + NLA_HDRLEN);
                            uint32_t id = ntohl(ph->packet_id);
                            if (loss_ppm && rnd_ppm() < loss_ppm) verdict(NFQNL_MSG_VERDICT, id, NF_DROP);
                            else if (tail - head >= RING) /* full: let it through now */
                                verdict(NFQNL_MSG_VERDICT, id, NF_ACCEPT);
                            else {
                                ids[tail % RING] = id;
                                due[tail % RING] = arrived + delay_us;
                                tail++;
                            }
                            break;
                        }
                        left -= NLA_ALIGN(a->nla_len);
                        a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len));
                    }
                }
            }
        }
        /* Release every packet that is due, oldest first, with one batch
         * verdict (it accepts every id up to the last due one that has no
         * verdict yet: packets dropped above already have theirs). */
        t = now_us();
        size_t last = head;
        while (last != tail && due[last % RING] <= t) last++;
        if (last != head) {
            if (verdict(NFQNL_MSG_VERDICT_BATCH, ids[(last - 1) % RING], NF_ACCEPT) < 0)
                perror("dmnist-lab-link: verdict");
            head = last;
        }
    }
    if (head != tail) verdict(NFQNL_MSG_VERDICT_BATCH, ids[(tail - 1) % RING], NF_ACCEPT);
    return 0;
}
