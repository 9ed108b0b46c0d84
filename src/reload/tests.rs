use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use super::changes;

/// Reading the config must not look like a change to it: steer reads the
/// file on every change it is told of, and a read that counted would make
/// an idle steer read its config (on a fresh thread) every `DEBOUNCE`,
/// forever.
#[test]
fn reading_the_config_is_not_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(&config, "# routes\n").unwrap();
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(changes(move |event| {
        let _ = tx.send(event.paths);
    }))
    .unwrap();
    watcher
        .watch(dir.path(), RecursiveMode::NonRecursive)
        .unwrap();
    for _ in 0..3 {
        std::fs::read(&config).unwrap();
    }
    // Events arrive in order: the first one passed on must be this write.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "x").unwrap();
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        first.iter().any(|p| p.ends_with("other.toml")),
        "a read was passed on as a change: {first:?}"
    );
}
