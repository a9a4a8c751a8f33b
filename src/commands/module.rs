//! `hivemind module`: upload modules.

use super::Global;
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum ModuleCmd {
    /// Upload a module (skipped when the coordinator already has it); prints its id.
    #[command(after_help = "Example:\n  hivemind module upload wordcount.wasm")]
    Upload {
        /// The `.wasm` file.
        file: PathBuf,
    },
}

impl ModuleCmd {
    pub async fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        match self {
            ModuleCmd::Upload { file } => {
                let bytes =
                    std::fs::read(&file).with_context(|| format!("cannot read `{}`", file.display()))?;
                let info = global.client()?.upload_module(bytes).await?;
                if global.json {
                    println!(
                        "{}",
                        serde_json::json!({ "module_id": info.module_id, "size": info.size, "kind": info.kind })
                    );
                } else {
                    println!("{}", info.module_id);
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
