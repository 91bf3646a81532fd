//! Client tools and the NVMe/TCP initiator library (later issues fill this in).
#![forbid(unsafe_code)]
