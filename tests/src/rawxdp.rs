//! XDP programs of a few instructions, written as BPF bytecode and loaded with `bpf(2)`, and
//! native attachment of a program to an interface through a BPF link: the trivial programs a
//! packet-rate benchmark needs next to edgelb's (a verdict and nothing else, a sink that
//! repairs what a forwarded frame's rewrite changed), without an eBPF object of their own.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
/// Helper ids (`enum bpf_func_id`).
const GET_PRANDOM_U32: i32 = 7;
const TAIL_CALL: i32 = 12;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// One `struct bpf_insn`.
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    /// dst register in the low nibble, src register in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// `r0 = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
const fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}

/// `dst = src` (BPF_ALU64 | BPF_MOV | BPF_X).
const fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}

/// `dst += imm` (BPF_ALU64 | BPF_ADD | BPF_K).
const fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}

/// `dst = *(u32 *)(src + off)` (BPF_LDX | BPF_MEM | BPF_W).
const fn load_u32(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}

/// `if dst > src goto +off` (BPF_JMP | BPF_JGT | BPF_X).
const fn jgt_reg(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x2d, dst, src, off, 0)
}

/// `*(size *)(dst + off) = imm` (BPF_ST | BPF_MEM | size), size 4, 2 or 1 bytes.
fn store_imm(dst: u8, off: i16, bytes: &[u8]) -> Insn {
    let (size, imm) = match bytes.len() {
        4 => (
            0x00,
            i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        ),
        2 => (0x08, i32::from(u16::from_le_bytes([bytes[0], bytes[1]]))),
        1 => (0x10, i32::from(bytes[0])),
        n => panic!("no BPF store of {n} bytes"),
    };
    insn(0x62 | size, dst, 0, off, imm)
}

/// `dst &= imm`, `dst ^= imm` (BPF_ALU64 | BPF_AND / BPF_XOR | BPF_K).
const fn and_imm(dst: u8, imm: i32) -> Insn {
    insn(0x57, dst, 0, 0, imm)
}

const fn xor_imm(dst: u8, imm: i32) -> Insn {
    insn(0xa7, dst, 0, 0, imm)
}

/// `*(u16 *)(dst + off) = src` (BPF_STX | BPF_MEM | BPF_H).
const fn store_u16(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x6b, dst, src, off, 0)
}

/// `call helper`.
const fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}

/// `dst = map` (BPF_LD | BPF_IMM | BPF_DW with BPF_PSEUDO_MAP_FD): two instructions.
fn load_map(dst: u8, map: BorrowedFd<'_>) -> [Insn; 2] {
    [insn(0x18, dst, 1, 0, map.as_raw_fd()), insn(0, 0, 0, 0, 0)]
}

const EXIT: Insn = insn(0x95, 0, 0, 0, 0);

/// `bpf(cmd, attr)` for an attribute struct living across the call; the new descriptor on
/// success (for commands that return one).
fn bpf<T>(cmd: libc::c_long, attr: &mut T, what: &str) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for `cmd` (the callers' structs follow the
    // kernel's layout), alive for the call; what it points at outlives the call too.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        return Err(std::io::Error::new(err.kind(), format!("{what}: {err}")));
    }
    Ok(rc)
}

/// A one-entry program array, for a tail call into another XDP program.
pub struct ProgArray {
    fd: OwnedFd,
}

impl ProgArray {
    /// An array whose entry 0 is `prog`.
    pub fn holding(prog: BorrowedFd<'_>) -> std::io::Result<Self> {
        #[repr(C, align(8))]
        #[derive(Default)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
            // Explicit, as in `prog_by_id`'s.
            _pad: u32,
        }
        let mut attr = CreateAttr {
            map_type: BPF_MAP_TYPE_PROG_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..CreateAttr::default()
        };
        let rc = bpf(BPF_MAP_CREATE, &mut attr, "creating a program array")?;
        // SAFETY: a successful BPF_MAP_CREATE returns a new file descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(rc as i32) };
        #[repr(C, align(8))]
        struct UpdateAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let (key, value) = (0u32, prog.as_raw_fd() as u32);
        let mut attr = UpdateAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr, "filling the program array")?;
        Ok(ProgArray { fd })
    }
}

/// A descriptor of the loaded program with id `id` (as `ip link` shows an attached one).
pub fn prog_by_id(id: u32) -> std::io::Result<OwnedFd> {
    #[repr(C, align(8))]
    #[derive(Default)]
    struct IdAttr {
        id: u32,
        next_id: u32,
        open_flags: u32,
        // Explicit: the kernel refuses an attribute with non-zero bytes past the fields it
        // knows, and padding may hold anything.
        _pad: u32,
    }
    let mut attr = IdAttr {
        id,
        ..IdAttr::default()
    };
    let rc = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr, "BPF_PROG_GET_FD_BY_ID")?;
    // SAFETY: a successful BPF_PROG_GET_FD_BY_ID returns a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// A loaded XDP program; unloaded when dropped (and no link holds it).
pub struct RawXdp {
    fd: OwnedFd,
}

impl RawXdp {
    /// `return action;`
    pub fn verdict(name: &str, action: u32) -> std::io::Result<Self> {
        Self::load(name, &[mov_imm(0, action as i32), EXIT])
    }

    /// A sink for frames that another program rewrote: writes `bytes` back at `offset` from
    /// the frame's start (when the frame is that long) and drops it. Live test runs recycle
    /// their pages without copying the frame again, so a forwarded frame must be put back as
    /// it was before its page is used for the next one.
    pub fn restoring_sink(name: &str, offset: usize, bytes: &[u8]) -> std::io::Result<Self> {
        let end = i32::try_from(offset + bytes.len()).expect("small frame");
        let mut stores = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let n = match bytes.len() - at {
                4.. => 4,
                2..=3 => 2,
                _ => 1,
            };
            let off = i16::try_from(offset + at).expect("small frame");
            stores.push(store_imm(2, off, &bytes[at..at + n]));
            at += n;
        }
        let mut prog = vec![
            load_u32(2, 1, 0), // r2 = ctx->data
            load_u32(3, 1, 4), // r3 = ctx->data_end
            mov_reg(4, 2),
            add_imm(4, end),
            jgt_reg(4, 3, i16::try_from(stores.len()).expect("few stores")),
        ];
        prog.extend(stores);
        prog.extend([mov_imm(0, XDP_DROP as i32), EXIT]);
        Self::load(name, &prog)
    }

    /// A SYN flood's source of spoofed clients, for live test runs of one IPv4 TCP frame whose
    /// source address ends in 0.0, IP id is 0xffff and source port 0xffff (checksums correct
    /// for those): each run writes a random 16-bit value R over the address's last two bytes
    /// and its complement over the id and the port, which leaves both checksums correct
    /// (R + !R is the same in one's complement whatever R is). Then the frame goes on to
    /// `then` (entry 0 of the array, a tail call), or without one to the stack (`XDP_PASS`).
    pub fn spoofer(name: &str, then: Option<&ProgArray>) -> std::io::Result<Self> {
        let mut prog = vec![
            mov_reg(6, 1),
            call(GET_PRANDOM_U32),
            mov_reg(7, 0),
            and_imm(7, 0xffff),
            mov_reg(8, 7),
            xor_imm(8, 0xffff),
            load_u32(2, 6, 0), // r2 = ctx->data
            load_u32(3, 6, 4), // r3 = ctx->data_end
            mov_reg(4, 2),
            add_imm(4, 14 + 20 + 20),
        ];
        let mut tail = vec![
            store_u16(2, 7, 14 + 14), // source address, last two bytes
            store_u16(2, 8, 14 + 4),  // IP id
            store_u16(2, 8, 14 + 20), // source port
        ];
        if let Some(array) = then {
            tail.push(mov_reg(1, 6));
            tail.extend(load_map(2, array.fd.as_fd()));
            tail.push(mov_imm(3, 0));
            tail.push(call(TAIL_CALL));
        }
        prog.push(jgt_reg(4, 3, i16::try_from(tail.len()).expect("few")));
        prog.extend(tail);
        prog.extend([mov_imm(0, XDP_PASS as i32), EXIT]);
        Self::load(name, &prog)
    }

    fn load(name: &str, insns: &[Insn]) -> std::io::Result<Self> {
        #[repr(C, align(8))]
        #[derive(Default)]
        struct LoadAttr {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
            prog_name: [u8; 16],
            prog_ifindex: u32,
            expected_attach_type: u32,
        }
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = LoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            expected_attach_type: BPF_XDP,
            ..LoadAttr::default()
        };
        for (d, s) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        let rc = bpf(
            BPF_PROG_LOAD,
            &mut attr,
            &format!("loading XDP program {name}"),
        )
        .map_err(|e| {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            std::io::Error::new(
                e.kind(),
                format!("{e}: {}", String::from_utf8_lossy(&log[..end])),
            )
        })?;
        // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(rc as i32) };
        Ok(RawXdp { fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A program attached in native (driver) mode to an interface of the caller's network
/// namespace; detached when dropped.
pub struct XdpLink {
    _fd: OwnedFd,
}

impl XdpLink {
    pub fn native(prog: BorrowedFd<'_>, ifindex: u32) -> std::io::Result<Self> {
        #[repr(C, align(8))]
        #[derive(Default)]
        struct LinkAttr {
            prog_fd: u32,
            target_ifindex: u32,
            attach_type: u32,
            flags: u32,
            _rest: [u64; 4],
        }
        let mut attr = LinkAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: XDP_FLAGS_DRV_MODE,
            ..LinkAttr::default()
        };
        let rc = bpf(
            BPF_LINK_CREATE,
            &mut attr,
            &format!("attaching XDP to ifindex {ifindex} (native)"),
        )?;
        // SAFETY: a successful BPF_LINK_CREATE returns a new file descriptor that we now own.
        Ok(XdpLink {
            _fd: unsafe { OwnedFd::from_raw_fd(rc as i32) },
        })
    }
}
