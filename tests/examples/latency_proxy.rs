//! A proxy in front of a registry that adds a fixed delay to every request, for the
//! benchmarks: `latency_proxy UPSTREAM MILLIS`. Prints its address, then serves until killed.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: latency_proxy UPSTREAM MILLIS");
        std::process::exit(2);
    }
    let delay = std::time::Duration::from_millis(args[2].parse().expect("MILLIS is a number"));
    let proxy = berth_e2e::Proxy::start(
        &args[1],
        std::sync::Arc::new(move |_: &berth_e2e::ProxiedRequest| {
            std::thread::sleep(delay);
            berth_e2e::Verdict::Forward(None)
        }),
    );
    println!("{}", proxy.addr);
    loop {
        std::thread::park();
    }
}
