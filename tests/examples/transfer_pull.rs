//! Drives one server-side pull through berthd's Transfer API, for the benchmarks:
//! `transfer_pull SOCKET REFERENCE [NAMESPACE]`. Prints nothing on success.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: transfer_pull SOCKET REFERENCE [NAMESPACE]");
        std::process::exit(2);
    }
    let ns = args.get(3).map_or("default", String::as_str);
    let (r, _) = berth_e2e::transfer::transfer(
        std::path::Path::new(&args[1]),
        ns,
        berth_e2e::transfer::Pull {
            reference: &args[2],
            platforms: vec![berth_e2e::transfer::amd64()],
            creds: None,
        },
    );
    if let Err(e) = r {
        eprintln!("transfer_pull: {:?}: {}", e.code(), e.message());
        std::process::exit(1);
    }
}
