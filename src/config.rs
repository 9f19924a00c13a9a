//! Command line (clap) and TOML configuration, merged and validated once
//! into typed values; the command line wins over the file.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    Auto,
    Uring,
    Epoll,
}
