//! containerd-shim-rustrunc-v2: a containerd runtime-v2 shim for runc.

use containerd_shim_rustrunc_v2::{bootstrap, cli, daemon, info};

use cli::Action;

fn main() {
    let flags = match cli::parse(std::env::args().skip(1)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if flags.version {
        let name = std::env::args().next().unwrap_or_default();
        let base = std::path::Path::new(&name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(name);
        println!(
            "{base}:\n  Version:  {}\n  Revision: {}\n",
            env!("CARGO_PKG_VERSION"),
            option_env!("GIT_REVISION").unwrap_or("unknown")
        );
        return;
    }
    if flags.info {
        let mut stdin = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin);
        match info::runtime_info(&stdin) {
            Ok(bytes) => return bootstrap::print(&bytes),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
    let result = match flags.action {
        Action::Start => bootstrap::start(&flags).map(|address| bootstrap::print(address.as_bytes())),
        Action::Delete => bootstrap::delete(&flags).map(|resp| bootstrap::print(&resp)),
        Action::Daemon => {
            containerd_shim_rustrunc_v2::memory::tune_daemon();
            daemon::run(&flags)
        }
    };
    if let Err(e) = result {
        eprintln!("{:?} failed: {e}", flags.action);
        std::process::exit(1);
    }
}
