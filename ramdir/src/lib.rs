//! The `ramdir` package as a library: the parts of the daemon that other
//! crates drive without the binary. Only the configuration file reader
//! lives here, so the fuzz targets (`fuzz/`) and the daemon parse
//! `ramdir.toml` with the same code; everything else stays in the binary
//! (`main.rs` and its modules).

pub mod config;
