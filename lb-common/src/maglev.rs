//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016), shared by the daemon and the XDP program.
//!
//! Userspace builds a lookup table of [`TABLE_SIZE`] backend indices with [`build_table`] and
//! writes it into a BPF array; both sides then send a client to
//! `table[table_slot(source_hash(addr))]`. Because the table, not the hash, decides the backend,
//! adding or removing a backend moves only a small share of clients, and every lookup costs one
//! hash and one array read.
//!
//! The hash functions here are MurmurHash3 (x86, 32-bit), fixed to little-endian words so that
//! every platform, the BPF target included, computes the same values.

/// Entries of a Maglev table. Prime, so that every `skip` in `1..TABLE_SIZE` walks all entries;
/// about 100 times the largest group we expect, which the paper needs for even shares.
pub const TABLE_SIZE: u32 = 65537;

/// A table entry that names no backend: the group has no backend of non-zero weight.
pub const NO_BACKEND: u32 = u32::MAX;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// Seed of [`source_hash`]. Changing it moves every client, so it is part of the contract.
const SOURCE_SEED: u32 = 0;

/// MurmurHash3's mixing of one 4-byte block `k` into the state `h`.
#[inline(always)]
const fn mix_block(h: u32, k: u32) -> u32 {
    (h ^ scramble(k))
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn scramble(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

/// MurmurHash3's finalizer (`fmix32`): every input bit flips each output bit with probability
/// close to 1/2, so sequential addresses land far apart.
#[inline(always)]
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The state after the first three blocks of every IPv4-mapped address (`::ffff:` is the
/// same 12 bytes for all): IPv4 clients, most of them, hash one block instead of four. In the
/// XDP program this is a third of the hashing of a forwarded frame.
const V4_MAPPED_STATE: u32 = mix_block(
    mix_block(mix_block(SOURCE_SEED, 0), 0),
    u32::from_le_bytes([0, 0, 0xff, 0xff]),
);

/// The state after the 16 address bytes.
#[inline(always)]
const fn address_state(addr: &[u8; 16]) -> u32 {
    let h = if crate::is_v4_mapped(addr) {
        V4_MAPPED_STATE
    } else {
        let h = mix_block(
            SOURCE_SEED,
            u32::from_le_bytes([addr[0], addr[1], addr[2], addr[3]]),
        );
        let h = mix_block(h, u32::from_le_bytes([addr[4], addr[5], addr[6], addr[7]]));
        mix_block(
            h,
            u32::from_le_bytes([addr[8], addr[9], addr[10], addr[11]]),
        )
    };
    mix_block(
        h,
        u32::from_le_bytes([addr[12], addr[13], addr[14], addr[15]]),
    )
}

/// The hash of a client address (IPv4 clients as IPv4-mapped `::ffff:a.b.c.d`):
/// MurmurHash3_x86_32 of the 16 bytes with seed 0.
///
/// Written out block by block, with constant indices only, so that the eBPF verifier sees
/// straight-line code with no bounds checks, loops or panics.
#[inline(always)]
pub const fn source_hash(addr: &[u8; 16]) -> u32 {
    fmix(address_state(addr) ^ 16)
}

/// The hash of a client's address and source port: MurmurHash3_x86_32 of the 16 address bytes
/// followed by the port as a little-endian `u32` block, seed 0. L4 listeners with
/// [`l4_flags::HASH_SRC_PORT`](crate::l4_flags::HASH_SRC_PORT) pick ring entries with it, and
/// every L4 frame's outer source address takes its low bits from it.
#[inline(always)]
pub const fn client_hash(addr: &[u8; 16], port: u16) -> u32 {
    fmix(mix_block(address_state(addr), port as u32) ^ 20)
}

/// The table entry of a hash. `TABLE_SIZE` is a non-zero constant, so this compiles to a
/// modulo by an immediate, which the verifier accepts.
#[inline(always)]
pub const fn table_slot(hash: u32) -> u32 {
    hash % TABLE_SIZE
}

#[cfg(feature = "user")]
pub use builder::build_table;

#[cfg(feature = "user")]
mod builder {
    use super::{NO_BACKEND, TABLE_SIZE, fmix, mix_block, scramble};
    use std::vec;
    use std::vec::Vec;

    /// Seeds of the two hashes that give each backend its permutation; any two distinct values
    /// work, but changing either reshuffles every table.
    const OFFSET_SEED: u32 = 0x5bd1_e995;
    const SKIP_SEED: u32 = 0x2545_f491;

    /// MurmurHash3_x86_32 of `data`.
    pub(super) fn murmur3_32(data: &[u8], seed: u32) -> u32 {
        let mut h = seed;
        let mut blocks = data.chunks_exact(4);
        for b in &mut blocks {
            h = mix_block(h, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
        let tail = blocks.remainder();
        if !tail.is_empty() {
            let k = tail
                .iter()
                .enumerate()
                .fold(0u32, |k, (i, b)| k | (u32::from(*b) << (8 * i)));
            h ^= scramble(k);
        }
        // The reference mixes in the length modulo 2^32.
        fmix(h ^ data.len() as u32)
    }

    /// One backend's walk through the table.
    struct Turn<'a> {
        key: &'a [u8],
        index: u32,
        weight: u64,
        /// Weight earned and not yet spent on a slot; see the loop in `build_table`.
        credit: u64,
        pos: u32,
        skip: u32,
    }

    /// The Maglev lookup table of a backend group: [`TABLE_SIZE`] entries, each the index in
    /// `backends` of the backend that serves the clients hashing there, or [`NO_BACKEND`] in
    /// every entry when no backend has a non-zero weight.
    ///
    /// Each backend is `(identity, weight)`. The identity (e.g. `"10.0.0.1:8080"`) seeds the
    /// backend's permutation, so a backend keeps most of its entries across changes to the
    /// rest of the group; the table depends only on the set of backends, not on their order.
    ///
    /// Weights follow Katran's `MaglevHashV2`: every round each backend earns its weight in
    /// credit and claims one entry per `max_weight` of credit, so entry shares are proportional
    /// to weight while claims stay interleaved (a backend of weight 100 among ones of weight 1
    /// does not grab a run of 100 entries at once). Weight 0 earns nothing and gets no entry.
    pub fn build_table(backends: &[(&[u8], u32)]) -> Vec<u32> {
        let m = TABLE_SIZE;
        let mut table = vec![NO_BACKEND; m as usize];
        let mut turns: Vec<Turn<'_>> = backends
            .iter()
            .enumerate()
            .filter(|(_, (_, weight))| *weight > 0)
            .filter_map(|(i, (key, weight))| {
                // Index NO_BACKEND would read as "no backend"; groups are nowhere near that big.
                let index = u32::try_from(i).ok().filter(|i| *i != NO_BACKEND)?;
                Some(Turn {
                    key,
                    index,
                    weight: u64::from(*weight),
                    credit: 0,
                    pos: murmur3_32(key, OFFSET_SEED) % m,
                    skip: murmur3_32(key, SKIP_SEED) % (m - 1) + 1,
                })
            })
            .collect();
        let Some(max_weight) = turns.iter().map(|t| t.weight).max() else {
            return table;
        };
        // Ties between equal keys fall back to list order, so the result is still determined.
        turns.sort_by(|a, b| a.key.cmp(b.key).then(a.index.cmp(&b.index)));

        let mut filled = 0u32;
        // Ends: every round, the backends of the largest weight claim an entry each.
        loop {
            for t in turns.iter_mut() {
                t.credit += t.weight;
                if t.credit < max_weight {
                    continue;
                }
                t.credit -= max_weight;
                // Some entry is still free (filled < m), and a skip in 1..m with m prime visits
                // every entry, so this walk ends within m steps.
                while table[t.pos as usize] != NO_BACKEND {
                    t.pos = (t.pos + t.skip) % m;
                }
                table[t.pos as usize] = t.index;
                t.pos = (t.pos + t.skip) % m;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::builder::murmur3_32;
    use super::*;
    use std::format;
    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:8080", i + 1)).collect()
    }

    fn table_of(keys: &[String], weights: &[u32]) -> Vec<u32> {
        let backends: Vec<(&[u8], u32)> = keys
            .iter()
            .zip(weights)
            .map(|(k, w)| (k.as_bytes(), *w))
            .collect();
        build_table(&backends)
    }

    /// Entries per backend, as fractions of the table.
    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut counts = vec![0u32; n];
        for e in table {
            counts[*e as usize] += 1;
        }
        counts
            .iter()
            .map(|c| f64::from(*c) / f64::from(TABLE_SIZE))
            .collect()
    }

    /// Of the entries that `before` gave to a backend still present in `after`: the fraction
    /// that changed owner (compared by key), and the fraction that went to a backend other than
    /// a newcomer (a move that no change of membership called for).
    fn moved(before: (&[u32], &[String]), after: (&[u32], &[String])) -> (f64, f64) {
        let (mut kept_owner, mut changed, mut needless) = (0u32, 0u32, 0u32);
        for (b, a) in before.0.iter().zip(after.0) {
            let owner = &before.1[*b as usize];
            if !after.1.contains(owner) {
                continue;
            }
            kept_owner += 1;
            let new_owner = &after.1[*a as usize];
            if new_owner != owner {
                changed += 1;
                if before.1.contains(new_owner) {
                    needless += 1;
                }
            }
        }
        let total = f64::from(kept_owner);
        (f64::from(changed) / total, f64::from(needless) / total)
    }

    #[test]
    fn murmur3_matches_the_reference_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0x9747_b28c),
            0x2fa8_26cd
        );
        let addr = v4_mapped_addr(192, 0, 2, 1);
        assert_eq!(source_hash(&addr), murmur3_32(&addr, SOURCE_SEED));
        let mut with_port = addr.to_vec();
        with_port.extend_from_slice(&40000u32.to_le_bytes());
        assert_eq!(
            client_hash(&addr, 40000),
            murmur3_32(&with_port, SOURCE_SEED)
        );
        assert_ne!(client_hash(&addr, 40000), client_hash(&addr, 40001));
        // IPv4-mapped addresses take a shortcut; it must not change a single value.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..10_000u32 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut addr = if i % 2 == 0 {
                let [a, b, c, d] = ((rng >> 32) as u32).to_be_bytes();
                v4_mapped_addr(a, b, c, d)
            } else {
                let mut v6 = [0u8; 16];
                v6[..8].copy_from_slice(&rng.to_le_bytes());
                v6[8..].copy_from_slice(&rng.rotate_left(17).to_le_bytes());
                v6
            };
            // Near misses of the mapped prefix.
            if i % 7 == 1 {
                addr[..12].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe]);
            }
            let port = (rng >> 16) as u16;
            let mut with_port = addr.to_vec();
            with_port.extend_from_slice(&u32::from(port).to_le_bytes());
            assert_eq!(
                source_hash(&addr),
                murmur3_32(&addr, SOURCE_SEED),
                "{addr:?}"
            );
            assert_eq!(
                client_hash(&addr, port),
                murmur3_32(&with_port, SOURCE_SEED),
                "{addr:?} port {port}"
            );
        }
    }

    fn v4_mapped_addr(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
        crate::v4_mapped([a, b, c, d])
    }

    #[test]
    fn shares_follow_weights() {
        let k = keys(2);
        let s = shares(&table_of(&k, &[1, 3]), 2);
        assert!(
            (s[0] - 0.25).abs() < 0.02 && (s[1] - 0.75).abs() < 0.02,
            "{s:?}"
        );

        let k = keys(5);
        let s = shares(&table_of(&k, &[1; 5]), 5);
        assert!(s.iter().all(|s| (s - 0.2).abs() < 0.02), "{s:?}");

        let k = keys(4);
        let s = shares(&table_of(&k, &[100, 50, 1, 0]), 4);
        let total = 151.0;
        for (share, w) in s.iter().zip([100.0, 50.0, 1.0, 0.0]) {
            assert!((share - w / total).abs() < 0.02, "{s:?}");
        }
    }

    #[test]
    fn weight_zero_gets_no_entry_and_all_zero_gives_no_backend() {
        let k = keys(3);
        let t = table_of(&k, &[2, 0, 1]);
        assert!(t.iter().all(|e| *e == 0 || *e == 2));
        assert_eq!(t.len(), TABLE_SIZE as usize);

        assert!(table_of(&k, &[0, 0, 0]).iter().all(|e| *e == NO_BACKEND));
        let none = build_table(&[]);
        assert_eq!(none.len(), TABLE_SIZE as usize);
        assert!(none.iter().all(|e| *e == NO_BACKEND));
    }

    #[test]
    fn tables_are_deterministic_and_independent_of_order() {
        let k = keys(3);
        let t = table_of(&k, &[1, 2, 3]);
        assert_eq!(t, table_of(&k, &[1, 2, 3]));
        // Pinned, so that a change of hash or of the fill order (which would move clients
        // between releases) does not go unnoticed.
        assert_eq!([t[0], t[1], t[2], t[1000], t[65536]], [2, 1, 2, 0, 1]);
        assert_eq!(
            [
                source_hash(&v4_mapped_addr(10, 0, 0, 1)),
                source_hash(&[0; 16]),
            ],
            [0x98fe_1236, 0x8134_cdf8]
        );

        let reversed: Vec<String> = k.iter().rev().cloned().collect();
        let r = table_of(&reversed, &[3, 2, 1]);
        assert!(
            t.iter()
                .zip(&r)
                .all(|(a, b)| k[*a as usize] == reversed[*b as usize])
        );
    }

    #[test]
    fn removing_or_adding_a_backend_moves_few_entries() {
        let ten = keys(10);
        let before = table_of(&ten, &[1; 10]);

        let nine: Vec<String> = ten.iter().filter(|k| *k != &ten[3]).cloned().collect();
        let after = table_of(&nine, &[1; 9]);
        let (removed, removed_needless) = moved((&before, &ten), (&after, &nine));

        let eleven = keys(11);
        let grown = table_of(&eleven, &[1; 11]);
        let (added, added_needless) = moved((&before, &ten), (&grown, &eleven));

        std::println!(
            "moved: removal {removed:.4} (needless {removed_needless:.4}), \
             addition {added:.4} (needless {added_needless:.4})"
        );
        assert!(removed < 0.15, "removal moved {removed}");
        // The newcomer must take about 1/11 of the table; the rest should stay put.
        assert!(added < 0.15, "addition moved {added}");
        assert!(
            added_needless < 0.05,
            "addition moved {added_needless} needlessly"
        );
    }

    #[test]
    fn source_hash_spreads_sequential_addresses() {
        let mut load = vec![0u32; TABLE_SIZE as usize];
        for i in 0..100_000u32 {
            let [a, b, c, d] = (0x0a00_0000 + i).to_be_bytes();
            load[table_slot(source_hash(&v4_mapped_addr(a, b, c, d))) as usize] += 1;
        }
        let max = load.iter().copied().max().unwrap_or(0);
        let used = load.iter().filter(|l| **l > 0).count();
        // Uniform hashing gives a Poisson(1.53) load: ~78% of buckets used, a maximum near 8.
        std::println!("max bucket {max}, buckets used {used}");
        assert!(max <= 12, "max bucket load {max}");
        assert!(used > 49_000, "only {used} buckets used");

        let mut plain = v4_mapped_addr(10, 0, 0, 1);
        plain[10] = 0;
        plain[11] = 0;
        assert_ne!(
            source_hash(&plain),
            source_hash(&v4_mapped_addr(10, 0, 0, 1))
        );
    }
}
