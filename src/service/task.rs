//! The generated `Task` trait: each RPC forwards to its handler in `rpc.rs`; a failure is logged
//! (at debug for the ones containerd uses to probe: State, Kill) and becomes its ttrpc code.

use protobuf::well_known_types::empty::Empty;
use ttrpc::{Result, TtrpcContext};

use super::Service;
use crate::error::Error;
use crate::protos::shim::shim::*;
use crate::protos::shim::shim_ttrpc::Task;

macro_rules! forward {
    ($($method:ident($req:ty) -> $resp:ty = $handler:ident, $name:literal, $level:ident;)*) => {
        impl Task for Service {
            $(
                fn $method(&self, _: &TtrpcContext, r: $req) -> Result<$resp> {
                    let id = r.id.clone();
                    self.$handler(r).map_err(|e| {
                        log::$level!("{} {id}: {e}", $name);
                        e.into()
                    })
                }
            )*

            fn wait(&self, _: &TtrpcContext, r: WaitRequest) -> Result<WaitResponse> {
                // The daemon serves Wait parked (`Service::wait_parked`): reaching this is a wiring
                // mistake.
                Err(Error::Other(format!("Wait {}: not served parked", r.id)).into())
            }
        }
    };
}

forward! {
    state(StateRequest) -> StateResponse = do_state, "State", debug;
    create(CreateTaskRequest) -> CreateTaskResponse = do_create, "Create", warn;
    start(StartRequest) -> StartResponse = do_start, "Start", warn;
    delete(DeleteRequest) -> DeleteResponse = do_delete, "Delete", warn;
    pids(PidsRequest) -> PidsResponse = do_pids, "Pids", warn;
    pause(PauseRequest) -> Empty = do_pause, "Pause", warn;
    resume(ResumeRequest) -> Empty = do_resume, "Resume", warn;
    checkpoint(CheckpointTaskRequest) -> Empty = do_checkpoint, "Checkpoint", warn;
    kill(KillRequest) -> Empty = do_kill, "Kill", debug;
    exec(ExecProcessRequest) -> Empty = do_exec, "Exec", warn;
    resize_pty(ResizePtyRequest) -> Empty = do_resize_pty, "ResizePty", warn;
    close_io(CloseIORequest) -> Empty = do_close_io, "CloseIO", warn;
    update(UpdateTaskRequest) -> Empty = do_update, "Update", warn;
    stats(StatsRequest) -> StatsResponse = do_stats, "Stats", warn;
    connect(ConnectRequest) -> ConnectResponse = do_connect, "Connect", warn;
    shutdown(ShutdownRequest) -> Empty = do_shutdown, "Shutdown", warn;
}
