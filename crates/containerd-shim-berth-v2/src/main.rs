//! `containerd-shim-berth-v2`: berth's shim v2 binary; everything it does is in `berth-shim`.

fn main() {
    std::process::exit(berth_shim::main());
}
