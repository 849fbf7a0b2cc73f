//! XDP programs of a few instructions, written as BPF bytecode and loaded with `bpf(2)`, and
//! native attachment of a program to an interface through a BPF link: the trivial programs a
//! packet-rate benchmark needs next to edgelb's (a verdict and nothing else, a sink that
//! repairs what a forwarded frame's rewrite changed), without an eBPF object of their own.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
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

const EXIT: Insn = insn(0x95, 0, 0, 0, 0);

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
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_PROG_LOAD; the instructions, the
        // license and the log buffer it points at outlive the call, the log at its stated size.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &mut attr as *mut LoadAttr,
                std::mem::size_of::<LoadAttr>(),
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            return Err(std::io::Error::new(
                err.kind(),
                format!(
                    "loading XDP program {name}: {err}: {}",
                    String::from_utf8_lossy(&log[..end])
                ),
            ));
        }
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
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_LINK_CREATE living across the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_LINK_CREATE,
                &mut attr as *mut LinkAttr,
                std::mem::size_of::<LinkAttr>(),
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                err.kind(),
                format!("attaching XDP to ifindex {ifindex} (native): {err}"),
            ));
        }
        // SAFETY: a successful BPF_LINK_CREATE returns a new file descriptor that we now own.
        Ok(XdpLink {
            _fd: unsafe { OwnedFd::from_raw_fd(rc as i32) },
        })
    }
}
