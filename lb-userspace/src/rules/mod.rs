//! Advanced forwarding rules (being written).
