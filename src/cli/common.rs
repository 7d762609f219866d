//! What every client command takes.

use clap::Args;

#[derive(Args)]
pub struct Common {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
