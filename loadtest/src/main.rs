//! `loadtest` command-line entry point. The load harness itself is not written yet (issue 3);
//! the simulators live in the library (`loadtest::twilio_sim`, `loadtest::agent_sim`).

use clap::Parser;

/// Load generator for media-relay (placeholder).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!("loadtest: the load harness is not implemented yet, see issue 3");
}
