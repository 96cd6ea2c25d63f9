// SPDX-License-Identifier: GPL-2.0
// Aegis datapath: cgroup socket hooks decide per socket which executable
// may talk to which destination, cgroup_skb/egress enforces the decision on
// every packet (holding sockets of unknown apps by dropping their packets),
// the TCP/UDP iterators abort denied sockets, and cgroup_skb/ingress copies
// DNS answers to userspace for hostname attribution.
//go:build ignore

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOL_TCP 6
#define TCP_SYNCNT 7
#define TCP_RTO_MAX_MS 44
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define SOCK_RAW 3
#define DNS_PORT 53
#define DNS_MAX 512

/* Context fields are read with explicit ctx+offset loads: clang 14 may
 * otherwise compute ctx+off once and load through the modified pointer,
 * which the verifier rejects ("dereference of modified ctx ptr"). */
#define CTX_LD32(ctx, type, field) ({                                         \
	__u32 __v;                                                                \
	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(__v)                        \
		     : "r"(ctx), "i"(__builtin_offsetof(type, field)));               \
	__v; })

#define CTX_SK(ctx) ({                                                        \
	struct bpf_sock *__sk;                                                    \
	asm volatile("%0 = *(u64 *)(%1 + %2)" : "=r"(__sk)                       \
		     : "r"(ctx), "i"(__builtin_offsetof(struct bpf_sock_addr, sk))); \
	__sk; })

/* What a rule, a decision or a socket's state says. */
enum verdict {
	VERDICT_NONE = 0,    /* no rule: the app is unknown */
	VERDICT_ALLOW = 1,
	VERDICT_DENY = 2,
	VERDICT_PENDING = 3, /* held while userspace asks the user */
};

/* Why a connection got its verdict, reported in events. */
enum reason {
	REASON_RULE = 1,     /* app or destination rule */
	REASON_PENDING = 2,  /* unknown app, held */
	REASON_LEARNING = 3, /* unknown app, passed in learning mode */
	REASON_FAILMODE = 4, /* unknown app while no helper beats */
	REASON_DECISION = 5, /* one-shot decision by cookie */
};

enum event_kind {
	EVENT_CONNECT = 1, /* connect(), TCP Fast Open, connected UDP */
	EVENT_SENDMSG = 2, /* sendto()/sendmsg() with an address */
	EVENT_DNS = 3,     /* DNS answer received by a socket */
	EVENT_SOCKET = 4,  /* raw, ICMP or other non-TCP/UDP inet socket */
};

enum mode { MODE_ENFORCE = 0, MODE_LEARNING = 1 };

enum fail_mode { FAIL_DENY = 0, FAIL_HOLD = 1, FAIL_ALLOW = 2 };

enum counter {
	COUNTER_EVENTS = 0,
	COUNTER_RINGBUF_FULL = 1,
	COUNTER_HELD_DROPS = 2,
	COUNTER_DENIED = 3,
	COUNTER_FAILMODE = 4,
	COUNTER_NO_STORAGE = 5,
	COUNTER_DNS = 6,
	COUNTER_KILLED = 7,
	COUNTER_MAX = 8,
};

/* Kernel identity of a running executable: the inode behind
 * task->mm->exe_file. ctime changes on every write to the file, a
 * replacement has a new inode, so either makes the app unknown again.
 * dev is the kernel encoding (major << 20 | minor). */
struct exe_key {
	__u64 ino;
	__u64 ctime_ns;
	__u32 dev;
	__u32 _pad;
};

/* An app rule applies to one user or, with uid ANY_UID, to every user. */
#define ANY_UID 0xffffffff

struct app_key {
	struct exe_key exe;
	__u32 uid;
	__u32 _pad;
};

struct app_info {
	__u32 app_id;
	__u8 verdict; /* enum verdict for destinations no rule names */
	__u8 has_dests; /* destination rules exist for app_id */
	__u8 _pad[2];
};

/* Per-app exact destination rule. port 0 and proto 0 are wildcards.
 * Addresses are 16 bytes, IPv4 stored v4-mapped (::ffff:a.b.c.d) so one
 * rule covers AF_INET and AF_INET6 sockets. */
struct dest_key {
	__u32 app_id;
	__u16 port;
	__u8 proto;
	__u8 _pad;
	__u8 addr[16];
};

/* Per-app CIDR rule: the LPM prefix covers app_id, port and proto (64
 * bits) and then the address bits. */
struct cidr_key {
	__u32 prefixlen;
	__u32 app_id;
	__u16 port;
	__u8 proto;
	__u8 _pad;
	__u8 addr[16];
};

/* A held request: TCP and connected UDP by socket, unconnected UDP by
 * socket and destination. */
struct pending_key {
	__u64 cookie;
	__u8 addr[16];
	__u16 port;
	__u8 proto;
	__u8 _pad[5];
};

struct sock_state {
	struct exe_key exe;
	__u64 cookie;
	__u64 start_time_ns;
	__u32 tgid;
	__u32 uid;
	__u8 daddr[16];
	__u16 dport;
	__u8 proto;
	__u8 verdict;
	__u8 udp_held; /* unconnected destinations wait in pending */
	__u8 _pad[7];
};

/* Every ring buffer record starts with kind. */
struct conn_event {
	__u32 kind;
	__u32 tgid;
	__u64 cookie;
	__u64 ts_ns;         /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
	__u64 start_time_ns; /* process start, CLOCK_BOOTTIME ns, as /proc/<pid>/stat */
	struct exe_key exe;
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u16 family;
	__u16 dport;
	__u8 proto;
	__u8 verdict;
	__u8 reason;
	__u8 _pad;
	__u8 daddr[16];
	char comm[16];
};

struct dns_event {
	__u32 kind;
	__u32 tgid;
	__u64 cookie;
	__u64 ts_ns;
	struct exe_key exe;
	__u32 uid;
	__u16 len;
	__u8 proto;
	__u8 _pad;
	__u8 payload[DNS_MAX];
};

/* Runtime knobs, written by userspace without reloading. */
struct config {
	__u64 heartbeat_timeout_ns; /* 0: never apply the fail mode */
	__s32 syncnt;     /* TCP_SYNCNT for held sockets; 0 = kernel default */
	__s32 rto_max_ms; /* TCP_RTO_MAX_MS for held sockets; 0 = default */
	__u32 syn_rto_ms; /* first SYN retransmission of held sockets; 0 = default */
	__u32 _pad0;
	__u8 mode;        /* enum mode */
	__u8 fail_mode;   /* enum fail_mode */
	__u8 capture_dns;
	__u8 _pad[5];
};

/* Force BTF for types only used from userspace or through the ring buffer. */
const struct conn_event *unused_conn_event __attribute__((unused));
const struct dns_event *unused_dns_event __attribute__((unused));
const enum verdict *unused_verdict __attribute__((unused));
const enum reason *unused_reason __attribute__((unused));
const enum event_kind *unused_event_kind __attribute__((unused));
const enum mode *unused_mode __attribute__((unused));
const enum fail_mode *unused_fail_mode __attribute__((unused));
const enum counter *unused_counter __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct app_key);
	__type(value, struct app_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dest_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cidrs SEC(".maps");

/* One-shot decisions for held sockets, by cookie ("allow once"). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} decisions SEC(".maps");

/* The source of truth for held requests; the ring buffer only wakes
 * userspace, which reconciles from here after an overflow or a restart. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pending_key);
	__type(value, struct conn_event);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pending SEC(".maps");

/* An unknown app's destination, reported once in learning mode. */
struct report_key {
	struct exe_key exe;
	__u8 addr[16];
	__u16 port;
	__u8 proto;
	__u8 _pad[5];
};

/* Unknown (app, destination) pairs already reported in learning mode. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct report_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} reported SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sk_state SEC(".maps");

/* Sockets to abort, by cookie, consumed by the iterators. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kill SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cfg SEC(".maps");

/* bpf_ktime_get_ns of the helper's last beat. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} heartbeat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += 1;
}

static __always_inline struct config *get_cfg(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&cfg, &zero);
}

/* helper_absent reports whether the helper missed its heartbeat. */
static __always_inline int helper_absent(const struct config *c)
{
	__u32 zero = 0;
	if (!c || !c->heartbeat_timeout_ns)
		return 0;
	__u64 *hb = bpf_map_lookup_elem(&heartbeat, &zero);
	if (!hb)
		return 1;
	return bpf_ktime_get_ns() - *hb > c->heartbeat_timeout_ns;
}

/* ---------------------------------------------------------------- identity */

struct inode___v66 {
	struct timespec64 __i_ctime;
} __attribute__((preserve_access_index));

struct inode___old {
	struct timespec64 i_ctime;
} __attribute__((preserve_access_index));

static __always_inline void task_exe(struct task_struct *t, struct exe_key *k, __u64 *start_ns)
{
	*start_ns = t->group_leader->start_boottime;
	struct mm_struct *mm = t->mm;
	if (!mm)
		return; /* kernel thread */
	struct file *f = mm->exe_file;
	if (!f)
		return;
	struct inode *ino = f->f_inode;
	if (!ino)
		return;
	k->ino = ino->i_ino;
	k->dev = ino->i_sb->s_dev;
	if (bpf_core_field_exists(ino->i_ctime_sec)) {
		/* 6.13+ multigrain timestamps keep a QUERIED flag in bit 31. */
		k->ctime_ns = (__u64)ino->i_ctime_sec * 1000000000ULL + (ino->i_ctime_nsec & 0x3fffffff);
	} else if (bpf_core_field_exists(((struct inode___v66 *)ino)->__i_ctime)) {
		struct inode___v66 *i2 = (void *)ino;
		k->ctime_ns = (__u64)i2->__i_ctime.tv_sec * 1000000000ULL + i2->__i_ctime.tv_nsec;
	} else {
		struct inode___old *i3 = (void *)ino;
		k->ctime_ns = (__u64)i3->i_ctime.tv_sec * 1000000000ULL + i3->i_ctime.tv_nsec;
	}
}

static __always_inline void read_exe(struct exe_key *k, __u64 *start_ns)
{
	/* A trusted BTF pointer: the reads are plain loads, not
	 * bpf_probe_read_kernel calls. */
	task_exe(bpf_get_current_task_btf(), k, start_ns);
}

/* ---------------------------------------------------------------- policy */

static __always_inline int dest_verdict(__u32 app_id, const __u8 *addr, __u16 port, __u8 proto)
{
	struct dest_key dk = { .app_id = app_id, .port = port, .proto = proto };
	struct cidr_key ck = { .prefixlen = 64 + 128, .app_id = app_id, .port = port, .proto = proto };
	__u8 *v;

	__builtin_memcpy(dk.addr, addr, 16);
	__builtin_memcpy(ck.addr, addr, 16);
	/* Most specific first: exact address before CIDR, a named port and
	 * protocol before wildcards. */
#pragma unroll
	for (int i = 0; i < 4; i++) {
		dk.port = (i & 1) ? 0 : port;
		dk.proto = (i & 2) ? 0 : proto;
		v = bpf_map_lookup_elem(&dests, &dk);
		if (v)
			return *v;
	}
#pragma unroll
	for (int i = 0; i < 4; i++) {
		ck.port = (i & 1) ? 0 : port;
		ck.proto = (i & 2) ? 0 : proto;
		v = bpf_map_lookup_elem(&cidrs, &ck);
		if (v)
			return *v;
	}
	return VERDICT_NONE;
}

/* verdict_for returns the verdict of the rules for exe run by uid
 * connecting to addr:port over proto, or VERDICT_NONE for unknown apps. */
static __always_inline int verdict_for(const struct exe_key *exe, __u32 uid, const __u8 *addr,
				       __u16 port, __u8 proto)
{
	struct app_key ak = { .exe = *exe, .uid = uid };
	struct app_info *ai = bpf_map_lookup_elem(&apps, &ak);
	if (!ai) {
		ak.uid = ANY_UID;
		ai = bpf_map_lookup_elem(&apps, &ak);
	}
	if (!ai)
		return VERDICT_NONE;
	if (ai->has_dests) {
		int v = dest_verdict(ai->app_id, addr, port, proto);
		if (v != VERDICT_NONE)
			return v;
	}
	return ai->verdict;
}

static __always_inline void v4_mapped(__u8 *a, __u32 ip4_be)
{
	__builtin_memset(a, 0, 16);
	a[10] = 0xff;
	a[11] = 0xff;
	__builtin_memcpy(a + 12, &ip4_be, 4);
}

/* fam is a compile-time constant per hook: the verifier refuses user_ip6
 * in *4 hooks and user_ip4 in *6 hooks even on dead branches. */
static __always_inline void ctx_addr(struct bpf_sock_addr *ctx, __u8 *a, const int fam)
{
	if (fam == AF_INET) {
		v4_mapped(a, CTX_LD32(ctx, struct bpf_sock_addr, user_ip4));
		return;
	}
	__u32 w0 = CTX_LD32(ctx, struct bpf_sock_addr, user_ip6[0]);
	__u32 w1 = CTX_LD32(ctx, struct bpf_sock_addr, user_ip6[1]);
	__u32 w2 = CTX_LD32(ctx, struct bpf_sock_addr, user_ip6[2]);
	__u32 w3 = CTX_LD32(ctx, struct bpf_sock_addr, user_ip6[3]);
	__builtin_memcpy(a, &w0, 4);
	__builtin_memcpy(a + 4, &w1, 4);
	__builtin_memcpy(a + 8, &w2, 4);
	__builtin_memcpy(a + 12, &w3, 4);
}

static __always_inline void fill_event(struct conn_event *e, __u32 kind, const struct exe_key *exe,
				       __u64 start_ns, __u64 cookie, const __u8 *addr, __u16 port,
				       __u8 proto, __u8 verdict, __u8 reason, const int fam)
{
	__u64 pt = bpf_get_current_pid_tgid();
	__u64 ug = bpf_get_current_uid_gid();

	__builtin_memset(e, 0, sizeof(*e));
	e->kind = kind;
	e->tgid = pt >> 32;
	e->tid = (__u32)pt;
	e->uid = (__u32)ug;
	e->gid = ug >> 32;
	e->cookie = cookie;
	e->ts_ns = bpf_ktime_get_ns();
	e->start_time_ns = start_ns;
	e->exe = *exe;
	e->family = fam;
	e->dport = port;
	e->proto = proto;
	e->verdict = verdict;
	e->reason = reason;
	__builtin_memcpy(e->daddr, addr, 16);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

/* emit copies ev into the ring buffer. A full ring buffer is counted; the
 * request itself is never lost because held requests live in pending. */
static __always_inline void emit(const struct conn_event *ev)
{
	struct conn_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_RINGBUF_FULL);
		return;
	}
	__builtin_memcpy(e, ev, sizeof(*e));
	bpf_ringbuf_submit(e, 0);
	count(COUNTER_EVENTS);
}

/* unknown_verdict decides an app no rule names, by mode and fail mode. */
static __always_inline int unknown_verdict(const struct config *c, __u8 *reason)
{
	if (c && c->mode == MODE_LEARNING) {
		*reason = REASON_LEARNING;
		return VERDICT_ALLOW;
	}
	if (helper_absent(c)) {
		*reason = REASON_FAILMODE;
		count(COUNTER_FAILMODE);
		if (c->fail_mode == FAIL_ALLOW)
			return VERDICT_ALLOW;
		if (c->fail_mode == FAIL_DENY)
			return VERDICT_DENY;
	}
	*reason = REASON_PENDING;
	return VERDICT_PENDING;
}

/* report_once sends ev unless its (app, destination) was reported lately. */
static __always_inline void report_once(const struct conn_event *ev)
{
	struct report_key rk = { .exe = ev->exe, .port = ev->dport, .proto = ev->proto };
	__u8 one = 1;

	__builtin_memcpy(rk.addr, ev->daddr, 16);
	if (bpf_map_update_elem(&reported, &rk, &one, BPF_NOEXIST) == 0)
		emit(ev);
}

/* ---------------------------------------------------------------- connect */

static __always_inline int on_connect(struct bpf_sock_addr *ctx, const int fam)
{
	__u8 proto = CTX_LD32(ctx, struct bpf_sock_addr, protocol);
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;

	struct exe_key exe = {};
	__u64 start_ns = 0;
	__u8 addr[16];
	__u16 port = bpf_ntohs((__u16)CTX_LD32(ctx, struct bpf_sock_addr, user_port));
	__u32 uid = (__u32)bpf_get_current_uid_gid();

	read_exe(&exe, &start_ns);
	ctx_addr(ctx, addr, fam);

	__u8 reason = REASON_RULE;
	int v = verdict_for(&exe, uid, addr, port, proto);
	struct config *c = get_cfg();
	if (v == VERDICT_NONE)
		v = unknown_verdict(c, &reason);

	if (v == VERDICT_ALLOW && reason == REASON_RULE && port != DNS_PORT) {
		/* Known app: the fast path, no event, no state: egress passes
		 * sockets without state. A socket held earlier keeps its state,
		 * so mark it decided. (DNS sockets get state below, so that
		 * answers are attributed to their app.) */
		struct sock_state *st = bpf_sk_storage_get(&sk_state, CTX_SK(ctx), 0, 0);
		if (st)
			st->verdict = VERDICT_ALLOW;
		return 1;
	}
	struct sock_state *st = bpf_sk_storage_get(&sk_state, CTX_SK(ctx), 0, BPF_SK_STORAGE_GET_F_CREATE);

	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (st) {
		st->exe = exe;
		st->cookie = cookie;
		st->start_time_ns = start_ns;
		st->tgid = bpf_get_current_pid_tgid() >> 32;
		st->uid = uid;
		__builtin_memcpy(st->daddr, addr, 16);
		st->dport = port;
		st->proto = proto;
		st->verdict = v;
	} else {
		count(COUNTER_NO_STORAGE);
	}
	if (v == VERDICT_ALLOW && reason == REASON_RULE)
		return 1;

	struct conn_event ev;
	fill_event(&ev, EVENT_CONNECT, &exe, start_ns, cookie, addr, port, proto, v, reason, fam);

	if (v == VERDICT_DENY) {
		count(COUNTER_DENIED);
		if (reason != REASON_RULE)
			emit(&ev);
		return 0; /* connect() fails with EPERM */
	}
	if (v == VERDICT_ALLOW) {
		report_once(&ev); /* learning mode or fail-open */
		return 1;
	}

	/* Held: unknown app in enforce mode. */
	if (!st)
		return 0; /* cannot hold without storage: fail closed */
	struct pending_key pk = { .cookie = cookie, .port = port, .proto = proto };
	__builtin_memcpy(pk.addr, addr, 16);
	bpf_map_update_elem(&pending, &pk, &ev, BPF_ANY);
	if (proto == IPPROTO_TCP && c) {
		/* Retransmit the held SYN at least every second for as long as
		 * the user takes, so the connection completes soon after allow. */
		if (c->syncnt) {
			int val = c->syncnt;
			bpf_setsockopt(ctx, SOL_TCP, TCP_SYNCNT, &val, sizeof(val));
		}
		if (c->rto_max_ms) {
			int val = c->rto_max_ms;
			bpf_setsockopt(ctx, SOL_TCP, TCP_RTO_MAX_MS, &val, sizeof(val));
		}
	}
	emit(&ev);
	return 1;
}

SEC("cgroup/connect4")
int aegis_connect4(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx, AF_INET);
}

SEC("cgroup/connect6")
int aegis_connect6(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx, AF_INET6);
}

/* ---------------------------------------------------------------- sockops */

extern int CONFIG_HZ __kconfig;

#define CTX_ST32(ctx, type, field, val) \
	asm volatile("*(u32 *)(%0 + %1) = %2" :: "r"(ctx),                        \
		     "i"(__builtin_offsetof(type, field)), "r"((__u32)(val)) : "memory")

/* Shortens the first SYN retransmission of held sockets (the kernel's is
 * 1 s), so that a connection allowed right away completes in a fraction of
 * a second; TCP_RTO_MAX_MS caps the later ones. Other sockets keep the
 * kernel's timeout. */
SEC("sockops")
int aegis_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_TIMEOUT_INIT)
		return 1;
	__u32 reply = (__u32)-1;
	struct config *c = get_cfg();
	struct bpf_sock *sk = skops->sk;
	if (c && c->syn_rto_ms && sk) {
		struct sock_state *st = bpf_sk_storage_get(&sk_state, sk, 0, 0);
		if (st && st->verdict == VERDICT_PENDING)
			reply = c->syn_rto_ms * CONFIG_HZ / 1000;
	}
	CTX_ST32(skops, struct bpf_sock_ops, reply, reply);
	return 1;
}

/* ---------------------------------------------------------------- sendmsg */

/* stamp_dns gives an unconnected socket of a known app that sends to port
 * 53 the state that attributes DNS answers to it. */
static __always_inline void stamp_dns(struct bpf_sock_addr *ctx, const struct exe_key *exe,
				      __u64 start_ns, __u32 uid)
{
	struct sock_state *st = bpf_sk_storage_get(&sk_state, CTX_SK(ctx), 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st || st->tgid)
		return;
	st->exe = *exe;
	st->start_time_ns = start_ns;
	st->tgid = bpf_get_current_pid_tgid() >> 32;
	st->uid = uid;
	st->verdict = VERDICT_ALLOW;
}

/* sendto()/sendmsg() with an address: decided per destination, since one
 * unconnected UDP socket talks to many peers. */
static __always_inline int on_sendmsg(struct bpf_sock_addr *ctx, const int fam)
{
	if (CTX_LD32(ctx, struct bpf_sock_addr, protocol) != IPPROTO_UDP)
		return 1;

	struct exe_key exe = {};
	__u64 start_ns = 0;
	__u8 addr[16];
	__u16 port = bpf_ntohs((__u16)CTX_LD32(ctx, struct bpf_sock_addr, user_port));
	__u32 uid = (__u32)bpf_get_current_uid_gid();

	read_exe(&exe, &start_ns);
	ctx_addr(ctx, addr, fam);

	__u8 reason = REASON_RULE;
	int v = verdict_for(&exe, uid, addr, port, IPPROTO_UDP);
	if (v == VERDICT_ALLOW) {
		if (port == DNS_PORT)
			stamp_dns(ctx, &exe, start_ns, uid);
		return 1;
	}
	struct config *c = get_cfg();
	if (v == VERDICT_NONE)
		v = unknown_verdict(c, &reason);

	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (v == VERDICT_PENDING) {
		/* The same destination on the same socket may already be held. */
		struct pending_key pk = { .cookie = cookie, .port = port, .proto = IPPROTO_UDP };
		__builtin_memcpy(pk.addr, addr, 16);
		__u8 *d = bpf_map_lookup_elem(&decisions, &cookie);
		if (d && *d == VERDICT_ALLOW)
			return 1;
		if (bpf_map_lookup_elem(&pending, &pk))
			return 1;
		struct sock_state *st = bpf_sk_storage_get(&sk_state, CTX_SK(ctx), 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st) {
			count(COUNTER_NO_STORAGE);
			return 0; /* cannot hold: fail closed */
		}
		st->udp_held = 1;
		if (!st->cookie)
			st->cookie = cookie;
		struct conn_event ev;
		fill_event(&ev, EVENT_SENDMSG, &exe, start_ns, cookie, addr, port, IPPROTO_UDP, v, reason, fam);
		bpf_map_update_elem(&pending, &pk, &ev, BPF_ANY);
		emit(&ev);
		return 1;
	}

	struct conn_event ev;
	fill_event(&ev, EVENT_SENDMSG, &exe, start_ns, cookie, addr, port, IPPROTO_UDP, v, reason, fam);
	if (v == VERDICT_DENY) {
		count(COUNTER_DENIED);
		if (reason != REASON_RULE)
			emit(&ev);
		return 0; /* sendto() fails with EPERM */
	}
	report_once(&ev);
	return 1;
}

SEC("cgroup/sendmsg4")
int aegis_sendmsg4(struct bpf_sock_addr *ctx)
{
	return on_sendmsg(ctx, AF_INET);
}

SEC("cgroup/sendmsg6")
int aegis_sendmsg6(struct bpf_sock_addr *ctx)
{
	return on_sendmsg(ctx, AF_INET6);
}

/* ---------------------------------------------------------------- sock_create */

/* TCP and UDP sockets are decided when they connect or send. Other inet
 * sockets (raw, ICMP "ping" sockets, SCTP) are decided here, per app, since
 * no connect or sendmsg hook sees all of them: an app no rule names may
 * open them only in learning mode. */
SEC("cgroup/sock_create")
int aegis_sock_create(struct bpf_sock *sk)
{
	if (sk->family != AF_INET && sk->family != AF_INET6)
		return 1;
	if (sk->type != SOCK_RAW && (sk->protocol == IPPROTO_TCP || sk->protocol == IPPROTO_UDP))
		return 1;

	struct exe_key exe = {};
	__u64 start_ns = 0;
	__u8 any[16] = {};
	__u32 uid = (__u32)bpf_get_current_uid_gid();

	read_exe(&exe, &start_ns);
	__u8 reason = REASON_RULE;
	int v = verdict_for(&exe, uid, any, 0, sk->protocol);
	if (v == VERDICT_ALLOW)
		return 1;
	struct config *c = get_cfg();
	if (v == VERDICT_NONE) {
		v = unknown_verdict(c, &reason);
		if (v == VERDICT_PENDING) {
			/* Nothing to hold before a destination exists. */
			v = VERDICT_DENY;
		}
	}
	struct conn_event ev;
	fill_event(&ev, EVENT_SOCKET, &exe, start_ns, bpf_get_socket_cookie(sk), any, 0,
		   sk->protocol, v, reason, sk->family);
	if (v == VERDICT_DENY) {
		count(COUNTER_DENIED);
		report_once(&ev);
		return 0; /* socket() fails with EPERM */
	}
	report_once(&ev);
	return 1;
}

/* ---------------------------------------------------------------- egress */

static __always_inline int pkt_dest(struct __sk_buff *skb, __u8 *addr, __u16 *port, __u8 want_proto)
{
	__u16 p;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0 || ip.protocol != want_proto)
			return -1;
		v4_mapped(addr, ip.daddr);
		if (bpf_skb_load_bytes(skb, ip.ihl * 4 + 2, &p, 2) < 0)
			return -1;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0 || ip6.nexthdr != want_proto)
			return -1;
		__builtin_memcpy(addr, &ip6.daddr, 16);
		if (bpf_skb_load_bytes(skb, sizeof(ip6) + 2, &p, 2) < 0)
			return -1;
	} else {
		return -1;
	}
	*port = bpf_ntohs(p);
	return 0;
}

/* held_udp handles a datagram of a socket with unconnected destinations
 * waiting: returns -1 when this datagram's destination is not held. */
static __always_inline int held_udp(struct __sk_buff *skb, struct sock_state *st)
{
	struct pending_key pk = { .cookie = st->cookie, .proto = IPPROTO_UDP };
	if (pkt_dest(skb, pk.addr, &pk.port, IPPROTO_UDP) < 0)
		return -1;
	struct conn_event *ev = bpf_map_lookup_elem(&pending, &pk);
	if (!ev)
		return -1;
	__u8 *d = bpf_map_lookup_elem(&decisions, &pk.cookie);
	int v = d ? *d : verdict_for(&ev->exe, ev->uid, pk.addr, pk.port, IPPROTO_UDP);
	if (v == VERDICT_ALLOW) {
		bpf_map_delete_elem(&pending, &pk);
		return 1;
	}
	if (v == VERDICT_DENY) {
		bpf_map_delete_elem(&pending, &pk);
		count(COUNTER_DENIED);
		return 0;
	}
	count(COUNTER_HELD_DROPS);
	/* 2 = drop with congestion notification: udp_sendmsg hides the
	 * resulting ENOBUFS unless IP_RECVERR is set, so the application
	 * sees ordinary packet loss and retries. */
	return 2;
}

SEC("cgroup_skb/egress")
int aegis_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1; /* request and timewait sockets: replies, not new flows */
	struct sock_state *st = bpf_sk_storage_get(&sk_state, sk, 0, 0);
	if (!st)
		return 1; /* the socket predates the datapath */

	if (st->udp_held) {
		int r = held_udp(skb, st);
		if (r >= 0)
			return r;
	}

	__u8 v = st->verdict;
	if (v == VERDICT_ALLOW || v == VERDICT_NONE)
		return 1;
	if (v == VERDICT_DENY)
		return 0;

	/* Held: a one-shot decision by cookie, else the rules again (the app
	 * may have been allowed since). */
	__u64 cookie = st->cookie;
	__u8 *d = bpf_map_lookup_elem(&decisions, &cookie);
	int nv = d ? *d : verdict_for(&st->exe, st->uid, st->daddr, st->dport, st->proto);
	if (nv == VERDICT_ALLOW || nv == VERDICT_DENY) {
		struct pending_key pk = { .cookie = cookie, .port = st->dport, .proto = st->proto };
		__builtin_memcpy(pk.addr, st->daddr, 16);
		bpf_map_delete_elem(&pending, &pk);
		st->verdict = nv;
		if (d)
			bpf_map_delete_elem(&decisions, &cookie);
	}
	if (nv == VERDICT_ALLOW)
		return 1;
	count(COUNTER_HELD_DROPS);
	return st->proto == IPPROTO_UDP ? 2 : 0;
}

/* ---------------------------------------------------------------- ingress */

/* dns_answer copies a DNS answer (source port 53) to userspace with the
 * receiving socket's owner, for hostname attribution. */
SEC("cgroup_skb/ingress")
int aegis_ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	__u32 proto = sk->protocol;
	if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
		return 1;
	/* Connected sockets name their peer's port: skip everything that is
	 * not DNS without touching the packet. */
	__u16 peer = bpf_ntohs(sk->dst_port);
	if (peer != DNS_PORT && (proto == IPPROTO_TCP || peer != 0))
		return 1;
	struct config *c = get_cfg();
	if (!c || !c->capture_dns)
		return 1;

	__u32 off;
	__u8 l4;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0)
			return 1;
		off = ip.ihl * 4;
		l4 = ip.protocol;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0)
			return 1;
		off = sizeof(ip6);
		l4 = ip6.nexthdr;
	} else {
		return 1;
	}
	__u16 sport;
	if (bpf_skb_load_bytes(skb, off, &sport, 2) < 0 || bpf_ntohs(sport) != DNS_PORT)
		return 1;
	if (l4 == IPPROTO_UDP) {
		off += 8;
	} else if (l4 == IPPROTO_TCP) {
		__u8 doff;
		if (bpf_skb_load_bytes(skb, off + 12, &doff, 1) < 0)
			return 1;
		off += (doff >> 4) * 4;
	} else {
		return 1;
	}
	if (off >= skb->len)
		return 1; /* a bare ACK: nothing to copy */
	__u32 len = skb->len - off;
	if (len > DNS_MAX)
		len = DNS_MAX;

	struct dns_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_RINGBUF_FULL);
		return 1;
	}
	e->kind = EVENT_DNS;
	e->ts_ns = bpf_ktime_get_ns();
	e->proto = l4;
	e->len = len;
	e->tgid = 0;
	e->uid = 0;
	e->cookie = bpf_get_socket_cookie(skb);
	__builtin_memset(&e->exe, 0, sizeof(e->exe));
	struct sock_state *st = bpf_sk_storage_get(&sk_state, sk, 0, 0);
	if (st) {
		e->tgid = st->tgid;
		e->uid = st->uid;
		e->exe = st->exe;
	}
	/* Give the verifier the bounds [1, DNS_MAX] it needs for the copy. */
	__u32 n = len - 1;
	asm volatile("%0 &= 0x1ff" : "+r"(n));
	n += 1;
	if (bpf_skb_load_bytes(skb, off, e->payload, n) < 0) {
		bpf_ringbuf_discard(e, 0);
		return 1;
	}
	bpf_ringbuf_submit(e, 0);
	count(COUNTER_DNS);
	return 1;
}

/* ---------------------------------------------------------------- kill */

/* Executables whose open sockets are to be aborted, set by userspace
 * while it runs the task_file iterator below. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct exe_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} revoke SEC(".maps");

/* The guarded cgroup, written when the datapath attaches: iterators see
 * every task of the machine and act only on those inside it. */
struct guard {
	__u64 cgroup_id;
	__u32 level;
	__u32 _pad;
};

const struct guard *unused_guard __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct guard);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} guarded SEC(".maps");

#define MAX_CGROUP_LEVEL 255

static __always_inline int task_guarded(struct task_struct *task)
{
	__u32 zero = 0;
	struct guard *g = bpf_map_lookup_elem(&guarded, &zero);
	if (!g || !g->cgroup_id)
		return 0;
	struct cgroup *cg = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	if (!cg)
		return 0;
	__u32 level = g->level;
	if (level > MAX_CGROUP_LEVEL || BPF_CORE_READ(cg, level) < (int)level)
		return 0;
	struct cgroup *anc = NULL;
	bpf_core_read(&anc, sizeof(anc), &cg->ancestors[level]);
	if (!anc)
		return 0;
	return BPF_CORE_READ(anc, kn, id) == g->cgroup_id;
}

/* Lists in kill the inet sockets held open by processes of the guarded
 * cgroup running an executable named in revoke: an app whose trust was
 * revoked loses the connections it opened while it was trusted. */
SEC("iter/task_file")
int aegis_collect_sockets(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	if (!task || !file)
		return 0;
	struct exe_key k = {};
	__u64 start = 0;
	task_exe(task, &k, &start);
	if (!bpf_map_lookup_elem(&revoke, &k))
		return 0;
	if (!task_guarded(task))
		return 0;
	struct socket *sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	struct sock *sk = sock->sk;
	if (!sk)
		return 0;
	__u16 family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	__u64 cookie = bpf_get_socket_cookie(sk);
	__u8 one = 1;
	bpf_map_update_elem(&kill, &cookie, &one, BPF_ANY);
	return 0;
}

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

static __always_inline void kill_if_listed(struct sock_common *skc)
{
	/* Touching a field makes clang emit the full struct in BTF; a bare
	 * forward declaration fails the kfunc type check. */
	if (skc->skc_family != AF_INET && skc->skc_family != AF_INET6)
		return;
	__u64 cookie = bpf_get_socket_cookie(skc);
	if (!bpf_map_lookup_elem(&kill, &cookie))
		return;
	bpf_map_delete_elem(&kill, &cookie);
	bpf_sock_destroy(skc);
	count(COUNTER_KILLED);
}

/* Aborts the TCP sockets listed in kill: a held connect() the user denied
 * returns ECONNABORTED at once. */
SEC("iter/tcp")
int aegis_kill_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (skc)
		kill_if_listed(skc);
	return 0;
}

SEC("iter/udp")
int aegis_kill_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;
	if (udp)
		kill_if_listed((struct sock_common *)udp);
	return 0;
}
