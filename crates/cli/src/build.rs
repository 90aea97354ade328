//! `runbox image build RECIPE`: an image from Debian packages plus added files.

use anyhow::Context;
use runbox_image::{BuildOptions, Recipe, Store};

use crate::cli::BuildArgs;
use crate::progress::BuildBar;
use crate::units::human_bytes;
use crate::{print_json, Exit};

pub fn run(store: &Store, args: BuildArgs) -> anyhow::Result<Exit> {
    let recipe = Recipe::load(&args.recipe)?;
    let bar = BuildBar::new(!args.json, recipe.name());
    let opts = BuildOptions {
        force: args.force,
        scratch_dir: args.scratch_dir,
        ..BuildOptions::default()
    };
    let result = store.build(&recipe, &opts, &bar);
    bar.finish();
    let report = result.with_context(|| format!("building {}", args.recipe.display()))?;
    if args.json {
        print_json(&report)?;
        return Ok(Exit::Ok);
    }
    let img = &report.image;
    let size = human_bytes(img.size_bytes);
    if report.cached {
        println!(
            "{}: cached {} ({size}): the recipe is unchanged (--force rebuilds)",
            recipe.name(),
            img.short_id()
        );
    } else {
        println!(
            "{}: built {} ({size}, {} layer{}) in {:.1} s",
            recipe.name(),
            img.short_id(),
            img.layers.len(),
            if img.layers.len() == 1 { "" } else { "s" },
            report.seconds
        );
    }
    if let Some(old) = &report.replaced {
        println!("removed the image it replaced: {old}");
    }
    Ok(Exit::Ok)
}
