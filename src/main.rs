//! `hivemind`: the command-line interface. It parses arguments and calls into the libraries; each
//! subcommand lives in its own file under `commands/`.

mod commands;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    commands::init_tracing();
    match cli.execute() {
        Ok(code) => code,
        Err(err) => {
            let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
