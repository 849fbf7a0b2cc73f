//! edgelb: a load balancer for Linux edge nodes. The binary's pieces, as a library so that the
//! integration tests drive the same code.
pub mod acl;
pub mod admin;
pub mod balance;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod entry;
pub mod etcd;
pub mod health;
mod layering;
pub mod metrics;
pub mod nexthop;
pub mod node;
pub mod privilege;
pub mod proxy;
pub mod rate_limit;
pub mod reloads;
pub mod rules;
pub mod server;
pub mod status;
pub mod syn_protect;
pub mod tls;
pub mod usage;
pub mod workers;
