//! Sticky sessions (being written).
