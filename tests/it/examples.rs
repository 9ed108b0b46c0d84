//! Every route table the repository ships loads: the examples in
//! `examples/` and the `routes.toml` of the Docker image and of every
//! Kubernetes base and overlay. `scripts/ci/deploy.sh` runs `steer check`
//! on the same files.

use std::path::{Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `*.toml` files directly in `dir`, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "toml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Loads `path` and requires it to pass the `steer check` lints too.
fn load(path: &Path) {
    let (config, warnings) =
        steer::config::check_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!config.routes.is_empty(), "{}: no routes", path.display());
    assert!(
        warnings.is_empty(),
        "{}: lint warnings: {warnings:#?}",
        path.display()
    );
}

#[test]
fn every_example_loads() {
    let files = toml_files(&repo().join("examples"));
    assert!(
        files.len() >= 5,
        "expected at least 5 examples in examples/, found {}: {files:?}",
        files.len()
    );
    for path in &files {
        load(path);
    }
}

#[test]
fn deployment_route_tables_load() {
    let mut files = vec![
        repo().join("deploy/docker/routes.toml"),
        repo().join("deploy/kubernetes/base/routes.toml"),
    ];
    let overlays = repo().join("deploy/kubernetes/overlays");
    let entries =
        std::fs::read_dir(&overlays).unwrap_or_else(|e| panic!("{}: {e}", overlays.display()));
    for entry in entries {
        let routes = entry
            .unwrap_or_else(|e| panic!("{}: {e}", overlays.display()))
            .path()
            .join("routes.toml");
        if routes.is_file() {
            files.push(routes);
        }
    }
    assert!(
        files.len() >= 3,
        "expected the Docker, base and at least one overlay routes.toml, found {files:?}"
    );
    for path in &files {
        load(path);
    }
}
