//! How other processes find and drive a running daemon, as operators of nginx expect: a pid
//! file, the result of the last reload beside it (so `edgelb reload` can say whether it took),
//! and systemd's readiness notifications.
pub mod client;
pub mod notify;
pub mod pid_file;
