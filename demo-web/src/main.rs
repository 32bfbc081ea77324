//! `meridian-demo`: serves the editor demo (in progress).

fn main() {
    eprintln!("meridian-demo: not built yet");
    std::process::exit(2);
}
