//! SYN cookies at the NIC: a new connection to a listener under protection is answered here,
//! with a SYN-ACK whose sequence number is the kernel's own SYN cookie
//! (`bpf_tcp_raw_gen_syncookie_*`), sent back out of the interface it came in on. The
//! kernel never sees the SYN; it sees the client's ACK, checks the cookie as it checks its
//! own, and creates the connection. Window scale and SACK ride in the low bits of the
//! SYN-ACK's timestamp, where the kernel reads them back from the echo
//! (`lb_common::cookie_timestamp`); a client without timestamps gets neither, as from the
//! kernel's own cookies. Two settings make the kernel accept these cookies (the daemon sets
//! them while protection is on): `net.ipv4.tcp_syncookies=2`, and `net.ipv4.tcp_timestamps=2`
//! (with 1 the kernel subtracts a secret per-connection offset from the echoed timestamp
//! before reading the options). And the listener must have sent a cookie itself in the last
//! two minutes: `stamp_due` passes it about one SYN every `SYN_STAMP_NS` for that.
//!
//! The SYN is copied into a per-CPU scratch entry and checked whole (header, options,
//! length) before the frame is changed: a SYN this module does not answer reaches the kernel
//! as it came.
use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr},
    helpers::{
        bpf_check_mtu, bpf_ktime_get_coarse_ns, bpf_tcp_raw_gen_syncookie_ipv4,
        bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
    },
    macros::map,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, ListenerInfo, Outcome, STATS_SLOTS, SYN_STAMP_ANY_NS,
    SYN_STAMP_NS, SYN_STAMP_SLOTS, cookie_timestamp,
    inet::{checksum, sum_words, syn_addresses_ok, tcp_header_checksum_ok},
    syn_cookies, syn_options, syn_stamp_slot,
};

use crate::icmp::ethernet_back;
use crate::{Frag, Parsed, at, bytes};

/// Per listener id and family: when a SYN was last passed to the kernel to stamp it.
#[map(name = "SYN_STAMPS")]
static SYN_STAMPS: Array<u64> = Array::with_max_entries(SYN_STAMP_SLOTS, 0);

/// Per listener id, per CPU: SYNs seen by listeners with `syn_cookies::WATCH`.
#[map(name = "SYNS")]
static SYNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);

/// One entry per CPU: the SYN being answered, copied (`Syn`; too big for the stack beside
/// what the program already keeps there).
#[map(name = "SYN_SCRATCH")]
static SYN_SCRATCH: PerCpuArray<Syn> = PerCpuArray::with_max_entries(1, 0);

/// One entry: what the answers may offer (`lb_common::syn_options`; the daemon writes it).
#[map(name = "SYN_OPTIONS")]
static SYN_OPTIONS: Array<u32> = Array::with_max_entries(1, 0);

/// The TCP header of the answer: 20 bytes and 20 of options (MSS, SACK permitted,
/// timestamps, window scale, or NOPs in their place).
const TCP_LEN: usize = 40;
/// The largest TCP header a SYN may carry.
const TCP_MAX: usize = 60;
const TTL: u8 = 64;
/// The window the SYN-ACK offers (never scaled).
const WINDOW: u16 = 65535;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// What a listener with SYN cookies does with an admitted frame: `SynCookie` when it was a
/// SYN and is answered, else `Passed`.
#[inline(always)]
pub(crate) fn handle(ctx: &XdpContext, info: &ListenerInfo, p: &Parsed, off: usize) -> Outcome {
    if p.proto != IPPROTO_TCP || off != 14 || !matches!(p.frag, Frag::Whole) {
        return Outcome::Passed;
    }
    let Ok(tcp) = bytes::<20>(ctx, p.l4) else {
        return Outcome::Passed;
    };
    if tcp[13] & (FIN | SYN | RST | ACK) != SYN {
        return Outcome::Passed;
    }
    if info.syn_cookies & syn_cookies::WATCH != 0
        && let Some(n) = SYNS.get_ptr_mut(info.id)
    {
        // SAFETY: a per-CPU slot is only written by the program running on that CPU.
        unsafe { *n += 1 };
    }
    if info.syn_cookies & syn_cookies::ANSWER == 0 {
        return Outcome::Passed;
    }
    // Answered only behind an IP header without options or extension headers.
    let syn = if p.is_v4 {
        if p.l4 != 14 + 20 {
            return Outcome::Passed;
        }
        read::<{ 14 + 20 }, 20>(ctx, tcp[12])
    } else {
        if p.l4 != 14 + 40 {
            return Outcome::Passed;
        }
        read::<{ 14 + 40 }, 40>(ctx, tcp[12])
    };
    let Some(syn) = syn else {
        return Outcome::Passed;
    };
    // SAFETY: this CPU's entry, used by nothing else while the program runs here.
    let syn = unsafe { &*syn };
    let Some(opts) = parse_options(&syn.tcp, syn.len as usize) else {
        return Outcome::Passed;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if stamp_due(info.id, p.is_v4, syn, now) {
        return Outcome::Passed;
    }
    let answered = if p.is_v4 {
        answer::<{ 14 + 20 }>(ctx, true, syn, &opts, now)
    } else {
        answer::<{ 14 + 40 }>(ctx, false, syn, &opts, now)
    };
    if answered.is_some() {
        Outcome::SynCookie
    } else {
        Outcome::Passed
    }
}

/// A SYN's headers, copied: the cookie helper and the checksum read them whole, at lengths
/// the verifier cannot tie to the frame's end, and the option walk reads at variable offsets
/// (the verifier forgets a packet pointer's checked range after a variable add).
#[repr(C)]
struct Syn {
    /// The IP header, ending where `tcp` starts (one copy takes both): IPv6's 40 bytes, or
    /// zeros and IPv4's 20 (`Syn::ip`).
    ip: [u8; 40],
    /// The TCP header, `len` bytes of it, then zeros.
    tcp: [u8; TCP_MAX],
    len: u32,
}

/// The SYN whose IP header of `IP` bytes starts at 14 and TCP header at `L4`, given the
/// byte of that header holding its length (`doff_byte`), copied into this CPU's
/// `SYN_SCRATCH`; None when the frame is shorter than its headers say.
#[inline(always)]
fn read<const L4: usize, const IP: u32>(ctx: &XdpContext, doff_byte: u8) -> Option<*mut Syn> {
    let syn = SYN_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's entry. The helper writes at most the lengths given, which fit the
    // buffers (`len` is at most 15 * 4 = TCP_MAX), and fails when the frame is shorter.
    unsafe {
        // Zeros past the header: the checksum sums the whole buffer. (`ip` needs none: IPv6
        // fills it, and IPv4's first 20 bytes are never read.)
        (*syn).tcp = [0; TCP_MAX];
        let len = u32::from(doff_byte >> 4) * 4;
        (*syn).len = len;
        // The options' length is what is checked and what the helper gets: the verifier only
        // knows the bounds of the register compared (checked on `len` itself, the compiler
        // compares a copy), and refuses a length it cannot see is non-zero.
        let options = len.wrapping_sub(20);
        // The IP header and the TCP header's first 20 bytes, in one copy: `ip` and `tcp` are
        // adjacent (`repr(C)`, byte arrays).
        let headers = syn.cast::<u8>().add(40 - IP as usize);
        if options > (TCP_MAX - 20) as u32
            || bpf_xdp_load_bytes(ctx.ctx, 14, headers.cast(), IP + 20) != 0
        {
            return None;
        }
        if options != 0 {
            let rest = (*syn).tcp.as_mut_ptr().add(20).cast();
            if bpf_xdp_load_bytes(ctx.ctx, (L4 + 20) as u32, rest, options) != 0 {
                return None;
            }
        }
    }
    Some(syn)
}

impl Syn {
    /// The IP header.
    #[inline(always)]
    fn ip(&self, v4: bool) -> &[u8] {
        if v4 { &self.ip[20..] } else { &self.ip }
    }
}

/// Whether this SYN goes to the kernel so that the listener has sent a cookie recently
/// (and records that it did; `SYN_STAMP_NS` says which SYN). The entry is shared by all
/// CPUs; racing ones may each pass one.
#[inline(always)]
fn stamp_due(id: u32, v4: bool, syn: &Syn, now: u64) -> bool {
    let Some(stamp) = SYN_STAMPS.get_ptr_mut(syn_stamp_slot(id, v4)) else {
        return true;
    };
    // SAFETY: the entry is a plain integer, written whole.
    unsafe {
        let age = now.saturating_sub(*stamp);
        let due = syn_addresses_ok(syn.ip(v4), v4)
            && (*stamp == 0
                || age >= SYN_STAMP_ANY_NS
                || (age >= SYN_STAMP_NS
                    && tcp_header_checksum_ok(syn.ip(v4), &syn.tcp, syn.len, v4)));
        if due {
            *stamp = now;
        }
        due
    }
}

/// The options of a SYN that shape the answer.
struct SynOptions {
    /// The client's window scale, or 0xff: none.
    wscale: u8,
    sack: bool,
    /// The client's timestamp value, big-endian as on the wire; `has_ts`: whether it sent one.
    tsval: [u8; 4],
    has_ts: bool,
}

/// Turns the SYN (its TCP header at `L4`, right after an IP header without options or
/// extension headers) into the SYN-ACK, in place. None: the frame is left as it came.
#[inline(always)]
fn answer<const L4: usize>(
    ctx: &XdpContext,
    v4: bool,
    syn: &Syn,
    opts: &SynOptions,
    now: u64,
) -> Option<()> {
    // Masked for the verifier, which cannot see that `read` bounded it (a multiple of 4 up
    // to TCP_MAX stays what it was).
    let len = syn.len & 0x3c;
    // SAFETY: the helper reads the copies, of the lengths it is given (`read`).
    let cookie = unsafe {
        let th = syn.tcp.as_ptr() as *mut tcphdr;
        let ip = syn.ip(v4).as_ptr().cast_mut();
        if v4 {
            bpf_tcp_raw_gen_syncookie_ipv4(ip as *mut iphdr, th, len)
        } else {
            bpf_tcp_raw_gen_syncookie_ipv6(ip as *mut ipv6hdr, th, len)
        }
    };
    if cookie < 0 {
        return None;
    }
    let mut mtu: u32 = 0;
    // SAFETY: the helper reads the context and writes the one u32 it is given.
    unsafe { bpf_check_mtu(ctx.ctx as *mut _, 0, &mut mtu, 0, 0) };
    let host = SYN_OPTIONS.get(0).copied().unwrap_or(0);
    // The kernel's TCP clock counts milliseconds of the monotonic clock; the coarse one is
    // never ahead of it, and the timestamp must never be (`cookie_timestamp`).
    let now_ms = (now / 1_000_000) as u32;
    // The last step that can fail: from here on the frame is the answer.
    set_len(ctx, L4 + TCP_LEN)?;
    build::<L4>(ctx, v4, cookie as u32, mtu, host, now_ms, opts)
}

/// Writes the SYN-ACK over the SYN.
#[inline(always)]
fn build<const L4: usize>(
    ctx: &XdpContext,
    v4: bool,
    cookie: u32,
    mtu: u32,
    host: u32,
    now_ms: u32,
    o: &SynOptions,
) -> Option<()> {
    // SAFETY: the range was checked against data_end.
    let h = unsafe { &mut *at::<L4>(ctx, 0)? };
    let t = unsafe { &mut *at::<TCP_LEN>(ctx, L4)? };
    let eth: [u8; 14] = {
        let mut e = [0u8; 14];
        e.copy_from_slice(&h[..14]);
        e
    };
    let mss = if v4 {
        ethernet_back(h, &eth, ETH_P_IPV4);
        h[15] = 0;
        h[16..18].copy_from_slice(&((20 + TCP_LEN) as u16).to_be_bytes());
        h[18..22].copy_from_slice(&[0, 0, 0x40, 0]);
        h[22] = TTL;
        h[24..26].copy_from_slice(&[0; 2]);
        for i in 0..4 {
            h.swap(26 + i, 30 + i);
        }
        let sum = checksum(sum_words(&h[14..34], 0));
        h[24..26].copy_from_slice(&sum.to_be_bytes());
        mtu.saturating_sub(40)
    } else {
        ethernet_back(h, &eth, ETH_P_IPV6);
        h[14..18].copy_from_slice(&(6u32 << 28).to_be_bytes());
        h[18..20].copy_from_slice(&(TCP_LEN as u16).to_be_bytes());
        h[21] = TTL;
        for i in 0..16 {
            h.swap(22 + i, 38 + i);
        }
        mtu.saturating_sub(60)
    }
    .min(0xffff) as u16;

    let client_seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    for i in 0..2 {
        t.swap(i, 2 + i);
    }
    t[4..8].copy_from_slice(&cookie.to_be_bytes());
    t[8..12].copy_from_slice(&client_seq.wrapping_add(1).to_be_bytes());
    t[12] = ((TCP_LEN / 4) as u8) << 4;
    t[13] = SYN | ACK;
    t[14..16].copy_from_slice(&WINDOW.to_be_bytes());
    t[16..20].copy_from_slice(&[0; 4]);
    t[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
    // Without timestamps the cookie carries no options: the answer offers none either.
    let sack = o.has_ts && o.sack && host & syn_options::SACK != 0;
    let scales = o.has_ts && o.wscale != 0xff && host & syn_options::SCALING != 0;
    let wscale = (host & syn_options::WSCALE_MASK) as u8;
    t[24..26].copy_from_slice(if sack { &[4, 2] } else { &[1, 1] });
    if o.has_ts {
        let client = if scales { Some(o.wscale) } else { None };
        let ts = cookie_timestamp(now_ms, client, sack);
        t[26..28].copy_from_slice(&[8, 10]);
        t[28..32].copy_from_slice(&ts.to_be_bytes());
        t[32..36].copy_from_slice(&o.tsval);
    } else {
        t[26..36].copy_from_slice(&[1; 10]);
    }
    let ws = if scales { [1, 3, 3, wscale] } else { [1; 4] };
    t[36..40].copy_from_slice(&ws);

    // The pseudo-header: addresses, protocol, TCP length.
    let addrs = if v4 { &h[26..34] } else { &h[22..54] };
    let pseudo = sum_words(addrs, u32::from(IPPROTO_TCP) + TCP_LEN as u32);
    let sum = checksum(sum_words(t, pseudo));
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    Some(())
}

/// The SYN's options, from its TCP header `h` of `len` bytes (at most `TCP_MAX`); None when
/// one is malformed.
#[inline(always)]
fn parse_options(h: &[u8; TCP_MAX], len: usize) -> Option<SynOptions> {
    let mut o = SynOptions {
        wscale: 0xff,
        sack: false,
        tsval: [0; 4],
        has_ts: false,
    };
    // No iteration counter: `i` grows every turn, and without a counter the verifier sees
    // the same state again (`i` and the flags) and stops exploring it; with one, every turn
    // was a new state and the program went past the verifier's million instructions.
    let mut i = 20usize;
    while i < len {
        let kind = *h.get(i)?;
        if kind == 0 {
            break;
        }
        if kind == 1 {
            i += 1;
            continue;
        }
        let n = *h.get(i + 1)? as usize;
        if n < 2 || i + n > len {
            return None;
        }
        match (kind, n) {
            (3, 3) => o.wscale = *h.get(i + 2)?,
            (4, 2) => o.sack = true,
            (8, 10) => {
                o.tsval = [
                    *h.get(i + 2)?,
                    *h.get(i + 3)?,
                    *h.get(i + 4)?,
                    *h.get(i + 5)?,
                ];
                o.has_ts = true;
            }
            _ => {}
        }
        i += n;
    }
    Some(o)
}

/// Makes the frame exactly `len` bytes long.
#[inline(always)]
fn set_len(ctx: &XdpContext, len: usize) -> Option<()> {
    let now = (ctx.data_end() - ctx.data()) as i64;
    let delta = len as i64 - now;
    if delta == 0 {
        return Some(());
    }
    // SAFETY: the helper checks the new end lies within the frame's buffer.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
        return None;
    }
    Some(())
}
