//! The block device layer (the bdev issue fills this in).
#![forbid(unsafe_code)]
