//! Which fabric a controller's queues run on, and what a build without RDMA says to it.

/// The fabric under every queue of a controller (SPDK's trtype).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Trtype {
    #[default]
    Tcp,
    /// Needs the `rdma` feature (peerless-tools/rdma); without it connecting says so.
    Rdma,
}

impl Trtype {
    /// "tcp" or "rdma", any case (as SPDK's and fio's transport IDs spell them).
    pub fn parse(text: &str) -> Option<Trtype> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Some(Trtype::Tcp),
            "rdma" => Some(Trtype::Rdma),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Trtype::Tcp => "TCP",
            Trtype::Rdma => "RDMA",
        }
    }

    /// Whether this build can connect over it: RDMA needs the `rdma` feature, and the
    /// error says so.
    pub fn available(self) -> std::result::Result<(), &'static str> {
        match self {
            Trtype::Rdma if !cfg!(feature = "rdma") => Err(NO_RDMA_FEATURE),
            _ => Ok(()),
        }
    }
}

/// What a build without the `rdma` feature answers to trtype RDMA.
pub const NO_RDMA_FEATURE: &str =
    "NVMe/RDMA: this build has no RDMA transport; rebuild with the `rdma` feature (cargo build --features peerless-tools/rdma)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trtype_names_parse_in_any_case() {
        assert_eq!(Trtype::parse("RDMA"), Some(Trtype::Rdma));
        assert_eq!(Trtype::parse("tcp"), Some(Trtype::Tcp));
        assert_eq!(Trtype::parse("fc"), None);
        assert_eq!(Trtype::Tcp.available(), Ok(()));
    }
}
