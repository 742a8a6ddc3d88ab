//! containerd-shim-rustrunc-v2 as a library: the binary (src/main.rs) is a thin dispatcher; the
//! decoders are also reachable from the fuzz targets in fuzz/.
//!
//! Only what main.rs, fuzz/ and the integration tests use is `pub`; everything else is `pub(crate)`,
//! so the dead-code lint sees what nothing uses.

pub mod bootstrap;
pub(crate) mod bundle;
pub(crate) mod cgroup;
pub mod cli;
pub(crate) mod container;
pub mod daemon;
pub mod error;
pub(crate) mod event_loop;
pub(crate) mod events;
// `pub`: the integration tests speak ttrpc by hand with it.
pub mod frame;
pub mod info;
pub(crate) mod lock;
pub(crate) mod logger;
pub mod memory;
pub(crate) mod mount;
pub(crate) mod oom;
pub mod options;
pub(crate) mod pool;
pub(crate) mod process;
pub mod protos;
pub(crate) mod reaper;
pub(crate) mod runc;
pub(crate) mod runtime;
pub(crate) mod server;
pub(crate) mod service;
pub(crate) mod spawn;
pub(crate) mod stats;
pub(crate) mod stdio;
pub(crate) mod sys;
