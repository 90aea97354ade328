//! `runbox script FILE`: runs a JSON-lines scenario (see runbox-script).

use std::io::BufReader;
use std::path::Path;

use anyhow::Context;
use runbox_engine::{Engine, EngineConfig};
use runbox_script::Driver;

use crate::cli::ScriptArgs;
use crate::Exit;

pub fn run(
    data_dir: &Path,
    catalog: std::sync::Arc<runbox_catalog::Catalog>,
    args: ScriptArgs,
) -> anyhow::Result<Exit> {
    let (input, base): (Box<dyn std::io::BufRead>, _) = if args.file.as_os_str() == "-" {
        (
            Box::new(std::io::stdin().lock()),
            std::env::current_dir().context("reading the current directory")?,
        )
    } else {
        let f = std::fs::File::open(&args.file).map_err(|e| {
            crate::error::CliError::new(
                runbox_core::ErrorCode::InputUnreadable,
                format!("cannot read script {}: {e}", args.file.display()),
            )
        })?;
        let base = args
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        (
            Box::new(BufReader::new(f)),
            if base.as_os_str().is_empty() {
                ".".into()
            } else {
                base
            },
        )
    };
    let mut cfg = EngineConfig::new(data_dir);
    // Scripts run many jobs: keep a network namespace ready for the next one.
    cfg.netns_ready = 1;
    cfg.catalog = Some(catalog);
    let engine = Engine::open(cfg)?;
    let mut driver = Driver::new(&engine, base);
    let summary = driver
        .run_script(input, &mut std::io::stdout().lock(), args.fail_fast)
        .context("writing responses")?;
    if summary.failed > 0 {
        eprintln!(
            "runbox: script: {} of {} commands failed",
            summary.failed, summary.commands
        );
        return Ok(Exit::Code(1));
    }
    Ok(Exit::Ok)
}
