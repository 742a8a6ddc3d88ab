//! containerd-shim-rustrunc-v2 as a library: the binary (src/main.rs) is a thin dispatcher; the
//! decoders are also reachable from the fuzz targets in fuzz/.

pub mod bootstrap;
pub mod cgroup;
pub mod cli;
pub mod container;
pub mod daemon;
pub mod error;
pub mod event_loop;
pub mod events;
pub mod info;
pub mod lock;
pub mod logger;
pub mod memory;
pub mod mount;
pub mod oom;
pub mod options;
pub mod pool;
pub mod process;
pub mod protos;
pub mod reaper;
pub mod runc;
pub mod runtime;
pub mod server;
pub mod service;
pub mod spawn;
pub mod stats;
pub mod stdio;
pub mod sys;
