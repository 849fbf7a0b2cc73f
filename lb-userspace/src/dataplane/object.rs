//! The XDP object compiled by build.rs, embedded in the binary.

/// The eBPF object, or `None` when the binary was built with `AYA_BUILD_SKIP=1`.
#[cfg(not(edgelb_no_ebpf))]
pub fn bytes() -> Option<&'static [u8]> {
    Some(aya::include_bytes_aligned!(concat!(
        env!("OUT_DIR"),
        "/lb-ebpf"
    )))
}

#[cfg(edgelb_no_ebpf)]
pub fn bytes() -> Option<&'static [u8]> {
    None
}
