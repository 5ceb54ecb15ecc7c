//! `berth-container`: berth's OCI runtime binary, which the berth shim executes for each
//! runtime operation with runc's command line; everything it does is in the library.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    std::process::exit(berth_container::main(&args));
}
