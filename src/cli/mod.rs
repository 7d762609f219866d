//! The command line: `ferry serve` runs everything; the client commands talk to a running ferry.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Share a file from your NAS through a link that works once, then vanishes."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run ferry: the control plane, the managed nginx and the log monitor.
    Serve,
}
