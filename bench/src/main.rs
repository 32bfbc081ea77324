//! `meridian-loadgen`: the benchmark load generator (issue 7, in progress).

fn main() {
    eprintln!("meridian-loadgen: not built yet");
    std::process::exit(2);
}
