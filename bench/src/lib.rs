//! Shared helpers for the benchmark programs.
#![forbid(unsafe_code)]
