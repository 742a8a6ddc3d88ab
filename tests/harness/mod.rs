//! The integration tests' one harness, in layers; each test file says `mod harness;`.
//!
//! - `host`: bounded commands, polling, leftover scans (mounts, cgroups, sockets, zombies),
//!   unique ids, the skip rule's message, signals. Re-exported here: `harness::unique_id`,
//!   `harness::run_bounded`, ... With `procs`: figures and argv of a process from /proc.
//! - `containerd` (on host): a private containerd per test, `ctr`, the skip rule, the leftovers of
//!   one instance. Re-exported here: `harness::Containerd`, `harness::IMAGE`, ...
//!   - `events`: `ctr events` as JSON; `writer`: the output writer's check; `restart`: containerd
//!     stopped and started again; `outage`: exits delivered across an outage; `fifo`: an output
//!     fifo read directly.
//! - `cri` (on containerd): containerd with its CRI plugin and a CRI client.
//! - the direct shim (on host): `shim` (a shim daemon started by hand, for ttrpc from the test),
//!   `ttrpc_raw` (payloads by hand on the shim's own frame codec), `load` (parked Waits,
//!   concurrent execs).
#![allow(dead_code)] // each test file uses a different part

pub mod containerd;
pub mod cri;
pub mod events;
pub mod fifo;
pub mod host;
pub mod load;
pub mod outage;
pub mod procs;
pub mod restart;
pub mod shim;
pub mod ttrpc_raw;
pub mod writer;

pub use containerd::*;
pub use host::*;
