//! Reading the files a config names (the config itself, certificates and
//! keys, CA bundles, the admin token). Only a regular file (or a symlink
//! to one) is read, and at most `MAX_FILE` bytes of it: a FIFO would block
//! the reader until some writer came, and `/dev/zero` would never end.
//! The config file is read on a thread of its own, under a deadline, so
//! that a hung network mount stalls neither serving nor a shutdown.

use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The largest file steer reads.
pub const MAX_FILE: u64 = 16 * 1024 * 1024;
/// How long a read of the config file may take.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Reads that may hang at once (each holds a thread stuck in the kernel);
/// past this, reads are refused until one returns.
const MAX_HANGING: usize = 4;

static READING: AtomicUsize = AtomicUsize::new(0);

/// Reads `path` whole, if it is a regular file of at most `MAX_FILE` bytes.
/// Blocking; the errors name the problem (the caller adds the path).
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    // Opened without blocking: opening a FIFO for reading would otherwise
    // wait for a writer. On a regular file the flag changes nothing.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(io::Error::other(format!(
            "{what}, not a regular file (steer reads only regular files)"
        )));
    }
    if meta.len() > MAX_FILE {
        return Err(too_large(meta.len()));
    }
    let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_FILE + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_FILE {
        return Err(too_large(out.len() as u64));
    }
    Ok(out)
}

fn too_large(size: u64) -> io::Error {
    io::Error::other(format!(
        "the file is {size} bytes; steer reads files of at most 16 MiB"
    ))
}

/// Runs `f` on a thread of its own and waits at most `deadline` for it. A
/// thread that hangs (a dead NFS server) is left behind, not waited for:
/// neither the caller nor the process exit depends on it.
pub(crate) async fn off_workers<T: Send + 'static>(
    deadline: Duration,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn_counted(move || {
        let _ = tx.send(f());
    })?;
    match tokio::time::timeout(deadline, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(io::Error::other(
            "the reading thread ended without an answer",
        )),
        Err(_) => Err(timed_out(deadline)),
    }
}

/// As `off_workers`, for callers outside the runtime (`steer check`, the
/// first load).
pub(crate) fn off_thread<T: Send + 'static>(
    deadline: Duration,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_counted(move || {
        let _ = tx.send(f());
    })?;
    match rx.recv_timeout(deadline) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(timed_out(deadline)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::other(
            "the reading thread ended without an answer",
        )),
    }
}

fn timed_out(deadline: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer within {deadline:?} (a hung file system?)"),
    )
}

fn spawn_counted(f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    if READING.fetch_add(1, Ordering::SeqCst) >= MAX_HANGING {
        READING.fetch_sub(1, Ordering::SeqCst);
        return Err(io::Error::other(
            "earlier reads of steer's files have not returned (a hung file system?)",
        ));
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            READING.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let spawned = std::thread::Builder::new()
        .name("steer-read".into())
        .spawn(move || {
            let _done = Done;
            f();
        });
    if let Err(e) = spawned {
        READING.fetch_sub(1, Ordering::SeqCst);
        return Err(e);
    }
    Ok(())
}

/// The config file, read under `READ_DEADLINE` on its own thread.
pub async fn config_file(path: &Path) -> io::Result<Vec<u8>> {
    let owned: PathBuf = path.to_path_buf();
    off_workers(READ_DEADLINE, move || read(&owned)).await
}

/// As `config_file`, blocking the caller (at most `READ_DEADLINE`).
pub fn config_file_blocking(path: &Path) -> io::Result<Vec<u8>> {
    let owned: PathBuf = path.to_path_buf();
    off_thread(READ_DEADLINE, move || read(&owned))
}

/// The admin bearer token: the file's text without surrounding
/// whitespace, which must not be empty.
pub fn token(path: &Path) -> io::Result<String> {
    let bytes = read(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| io::Error::other("the token file is not UTF-8 text"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(io::Error::other("the token file is empty"));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("routes.toml");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let err = read(&fifo).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
    }

    #[test]
    fn devices_and_directories_are_refused() {
        let err = read(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let err = read(Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
    }

    #[test]
    fn a_symlink_to_a_regular_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("real.toml");
        std::fs::write(&file, "x = 1\n").unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read(&link).unwrap(), b"x = 1\n");
    }

    #[test]
    fn a_file_over_the_cap_is_refused_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.toml");
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(MAX_FILE + 1).unwrap();
        let err = read(&file).unwrap_err();
        assert!(
            err.to_string().contains(&(MAX_FILE + 1).to_string()),
            "{err}"
        );
    }

    #[test]
    fn tokens_are_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret\n").unwrap();
        assert_eq!(token(&file).unwrap(), "s3cret");
        std::fs::write(&file, "\n").unwrap();
        assert!(token(&file).is_err());
    }
}
