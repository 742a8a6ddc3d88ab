//! The integration tests' one harness, in layers; each test file says `mod harness;`.
//!
//! - `host`: bounded commands, polling, leftover scans (mounts, cgroups, sockets, zombies),
//!   unique ids, signals. Re-exported here: `harness::unique_id`, `harness::run_bounded`, ...
//! - `containerd` (on host): a private containerd per test, `ctr`, the skip rule, the leftovers of
//!   one instance. Re-exported here: `harness::Containerd`, `harness::IMAGE`, ...
//!   - `events`: `ctr events` as JSON; `writer`: the output writer's check; `restart`: containerd
//!     stopped and started again; `outage`: exits delivered across an outage; `fifo`: an output
//!     fifo read directly.
//! - `cri` (on containerd): containerd with its CRI plugin and a CRI client.
//! - the direct shim (on host): `shim` (a shim daemon started by hand, for ttrpc from the test),
//!   `ttrpc_raw` (frames and payloads by hand), `load` (parked Waits, concurrent execs), `procs`
//!   (figures of a process from /proc).
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
