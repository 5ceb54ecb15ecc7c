//! `berth`: a docker-compatible command line for berthd. All of it lives in the library;
//! this only runs it and exits with its code.

fn main() -> std::process::ExitCode {
    let code = berth_cli::main();
    std::process::ExitCode::from(code.clamp(0, 255) as u8)
}
