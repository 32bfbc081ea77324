//! `meridian-hub`: the cloud hub. Not built yet (issue 3); this binary only
//! says so, so that nobody mistakes it for a working hub.

fn main() -> std::process::ExitCode {
    eprintln!("meridian-hub: the cloud hub is not implemented yet (tracked by issue 3). Run `meridian-edge serve` for now.");
    std::process::ExitCode::FAILURE
}
