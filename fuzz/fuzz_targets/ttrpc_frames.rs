#![no_main]
// See src/lib.rs for what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| containerd_shim_rustrunc_v2_fuzz::ttrpc_frames(data));
