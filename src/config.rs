//! Command line and TOML configuration.
