//! Shared pieces of edgelb's integration tests: crafted frames, network namespaces, certificates,
//! a recording backend, and the daemon as a child process.
pub mod admin;
pub mod backend;
pub mod certs;
pub mod client;
pub mod daemon;
pub mod dataplane_fixture;
pub mod flood_bench;
pub mod h3;
pub mod https;
pub mod l4topo;
pub mod listener;
pub mod live_bench;
pub mod load;
pub mod netns;
pub mod packet;
pub mod peaks;
pub mod pebble;
pub mod pki;
pub mod privilege;
pub mod raw;
pub mod rawxdp;
pub mod rng;
