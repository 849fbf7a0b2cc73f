//! Choosing a backend for each request.
pub mod wrr;
