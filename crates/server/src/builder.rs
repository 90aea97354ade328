//! Builds the catalog's images in the background (at start, and on an admin
//! request), one at a time, and keeps their status for `GET /api/catalog` and
//! for telling "still building" (409, retry) from "missing" (404).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runbox_catalog::Catalog;
use runbox_engine::Engine;
use runbox_image::build::{BuildOptions, Recipe};
use runbox_image::{BuildPhase, BuildProgress, ImportProgress, Store};

use crate::types::{BuildState, CatalogStatus, ImageBuild};

/// Shows a build's progress somewhere else too (the CLI draws a progress bar).
pub type ProgressFactory = Arc<dyn Fn(&str) -> Box<dyn BuildProgress + Send + Sync> + Send + Sync>;

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    recipe: String,
    path: PathBuf,
    state: BuildState,
    phase: Option<String>,
    started: Option<Instant>,
    took: Option<Duration>,
    error: Option<String>,
}

/// The catalog images and their build state.
pub struct Builder {
    entries: Mutex<Vec<Entry>>,
    /// Whether a build pass is running (a second request waits for none).
    busy: Mutex<bool>,
    scratch_dir: Option<PathBuf>,
    progress: Option<ProgressFactory>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// The catalog's images, marked ready when the store has them.
    pub fn new(
        catalog: &Catalog,
        store: &Store,
        scratch_dir: Option<PathBuf>,
        progress: Option<ProgressFactory>,
    ) -> Builder {
        let entries = catalog
            .all_recipes()
            .into_iter()
            .map(|(recipe, path)| {
                let name = catalog.recipe_image_name(&recipe);
                let ready = store.resolve(&name).is_ok();
                Entry {
                    name,
                    recipe,
                    path,
                    state: if ready {
                        BuildState::Ready
                    } else {
                        BuildState::Queued
                    },
                    phase: None,
                    started: None,
                    took: None,
                    error: None,
                }
            })
            .collect();
        Builder {
            entries: Mutex::new(entries),
            busy: Mutex::new(false),
            scratch_dir,
            progress,
        }
    }

    pub fn status(&self) -> CatalogStatus {
        let entries = self.entries.lock().expect("builder lock");
        CatalogStatus {
            images: entries
                .iter()
                .map(|e| ImageBuild {
                    name: e.name.clone(),
                    recipe: e.recipe.clone(),
                    state: e.state,
                    phase: e.phase.clone(),
                    elapsed_s: e
                        .took
                        .or_else(|| e.started.map(|s| s.elapsed()))
                        // Milliseconds are all anyone reads.
                        .map(|d| d.as_millis() as f64 / 1000.0),
                    error: e.error.clone(),
                })
                .collect(),
        }
    }

    /// The build state of the image named `name`, if it is a catalog image.
    pub fn state_of(&self, name: &str) -> Option<BuildState> {
        let entries = self.entries.lock().expect("builder lock");
        entries.iter().find(|e| e.name == name).map(|e| e.state)
    }

    /// Builds every image (only the missing ones unless `force`), one after the
    /// other, on a thread of its own, then runs `then` there. Returns false when a
    /// pass is already running.
    pub fn start(
        self: &Arc<Self>,
        engine: Arc<Engine>,
        force: bool,
        then: Option<Box<dyn FnOnce() + Send>>,
    ) -> bool {
        {
            let mut busy = self.busy.lock().expect("builder lock");
            if *busy {
                return false;
            }
            *busy = true;
        }
        {
            let mut entries = self.entries.lock().expect("builder lock");
            for e in entries.iter_mut() {
                if force || e.state != BuildState::Ready {
                    e.state = BuildState::Queued;
                    e.error = None;
                }
            }
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("catalog-build".into())
            .spawn(move || {
                me.pass(engine.store(), force);
                *me.busy.lock().expect("builder lock") = false;
                if let Some(then) = then {
                    then();
                }
            })
            .expect("spawning the catalog build thread");
        true
    }

    fn pass(&self, store: &Store, force: bool) {
        let todo: Vec<(usize, Entry)> = {
            let entries = self.entries.lock().expect("builder lock");
            entries
                .iter()
                .cloned()
                .enumerate()
                .filter(|(_, e)| e.state == BuildState::Queued)
                .collect()
        };
        for (i, e) in todo {
            self.update(i, |x| {
                x.state = BuildState::Building;
                x.started = Some(Instant::now());
                x.took = None;
                x.phase = Some("starting".into());
            });
            tracing::info!(image = %e.name, recipe = %e.recipe, "building a catalog image");
            let outcome = Recipe::load(&e.path).and_then(|recipe| {
                let extra = self.progress.as_ref().map(|f| f(&e.name));
                let progress = Tee {
                    builder: self,
                    index: i,
                    extra: extra.as_deref(),
                };
                let opts = BuildOptions {
                    force,
                    scratch_dir: self.scratch_dir.clone(),
                    ..Default::default()
                };
                store.build(&recipe, &opts, &progress)
            });
            match outcome {
                Ok(report) => {
                    tracing::info!(
                        image = %e.name,
                        cached = report.cached,
                        seconds = report.seconds,
                        "catalog image ready"
                    );
                    self.update(i, |x| {
                        x.state = BuildState::Ready;
                        x.phase = None;
                        x.took = x.started.map(|s| s.elapsed());
                    });
                }
                Err(err) => {
                    tracing::error!(image = %e.name, error = %err, "catalog image build failed");
                    self.update(i, |x| {
                        x.state = BuildState::Failed;
                        x.phase = None;
                        x.took = x.started.map(|s| s.elapsed());
                        x.error = Some(err.to_string());
                    });
                }
            }
        }
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut Entry)) {
        let mut entries = self.entries.lock().expect("builder lock");
        if let Some(e) = entries.get_mut(index) {
            f(e);
        }
    }
}

/// Passes build progress to the status and to the optional extra display.
struct Tee<'a> {
    builder: &'a Builder,
    index: usize,
    extra: Option<&'a (dyn BuildProgress + Send + Sync)>,
}

impl BuildProgress for Tee<'_> {
    fn phase(&self, phase: BuildPhase, elapsed: Duration) {
        self.builder.update(self.index, |e| {
            e.phase = Some(phase.as_str().to_owned());
        });
        if let Some(x) = self.extra {
            x.phase(phase, elapsed);
        }
    }
    fn tool_line(&self, line: &str) {
        if let Some(x) = self.extra {
            x.tool_line(line);
        }
    }
    fn import_progress(&self) -> &dyn ImportProgress {
        match self.extra {
            Some(x) => x.import_progress(),
            None => &runbox_image::NoProgress,
        }
    }
}
