//! Binary upgrade: the running steer hands its listening sockets to a new
//! steer over `listen.upgrade_socket` (a Unix socket), so that no
//! connection is refused while the binary changes.
//!
//! The protocol, one connection per upgrade:
//! 1. new -> old: connects.
//! 2. old -> new: one message, `steer-handover v1\n` then one line per
//!    socket (`http 0.0.0.0:8080`, the kind and the address it was configured
//!    with), with the listening sockets attached as SCM_RIGHTS in the same
//!    order.
//! 3. new: serves on them, then -> old: `ready\n`.
//! 4. old: stops accepting (the sockets stay open in the new process, so
//!    connections waiting in the backlog are accepted there), drains its
//!    open connections and exits as on SIGTERM.
//!
//! rustix does the SCM_RIGHTS part with owned file descriptors, so this
//! needs no `unsafe`.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

const HEADER: &str = "steer-handover v1";
/// How long a new steer may take to read the sockets and say `ready`.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// http, https, admin.
const MAX_SOCKETS: usize = 3;

/// A listening socket as handed over: its kind, configured address, fd.
#[derive(Debug)]
pub struct Socket {
    pub kind: String,
    pub configured: SocketAddr,
    pub fd: OwnedFd,
}

/// The new process's side of a handover in progress.
#[derive(Debug)]
pub struct Received {
    pub sockets: Vec<Socket>,
    stream: UnixStream,
}

impl Received {
    /// Takes the socket of `kind` if it was configured at `configured`.
    pub fn take(&mut self, kind: &str, configured: SocketAddr) -> Option<std::net::TcpListener> {
        let i = self
            .sockets
            .iter()
            .position(|s| s.kind == kind && s.configured == configured)?;
        let socket = self.sockets.remove(i);
        let listener = std::net::TcpListener::from(socket.fd);
        listener.set_nonblocking(true).ok()?;
        Some(listener)
    }

    /// Tells the old process that we serve: it may drain and exit.
    pub fn ready(mut self) -> std::io::Result<()> {
        self.stream.write_all(b"ready\n")
    }
}

/// Connects to a running steer and receives its sockets. `Ok(None)` when
/// no steer listens there (then the caller binds its own).
pub fn receive(path: &Path) -> std::io::Result<Option<Received>> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut text = vec![0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut text)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    let text = String::from_utf8_lossy(&text[..got.bytes]).into_owned();
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(std::io::Error::other(
            "the running steer does not speak handover v1",
        ));
    }
    let mut sockets = Vec::new();
    for (line, fd) in lines.zip(fds) {
        let (kind, addr) = line
            .split_once(' ')
            .ok_or_else(|| std::io::Error::other(format!("bad handover line `{line}`")))?;
        let configured = addr
            .parse()
            .map_err(|_| std::io::Error::other(format!("bad handover address `{addr}`")))?;
        sockets.push(Socket {
            kind: kind.to_owned(),
            configured,
            fd,
        });
    }
    Ok(Some(Received { sockets, stream }))
}

/// Sends `sockets` to the new process on `stream` and waits for its
/// `ready`. Blocking: run it off the async runtime.
fn send(mut stream: UnixStream, sockets: &[Socket]) -> std::io::Result<()> {
    let mut text = format!("{HEADER}\n");
    for s in sockets {
        text.push_str(&format!("{} {}\n", s.kind, s.configured));
    }
    let fds: Vec<_> = sockets.iter().map(|s| s.fd.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other(
            "too many sockets for one handover message",
        ));
    }
    rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    let mut answer = [0u8; 6];
    stream.read_exact(&mut answer)?;
    if &answer != b"ready\n" {
        return Err(std::io::Error::other(
            "the new steer did not confirm the handover",
        ));
    }
    Ok(())
}

/// The old process's side: listens on `path`; for each new steer that
/// connects, hands over what `sockets()` returns and, once it confirms,
/// returns (the caller then drains and exits). Waiting for a new steer is
/// an async accept, so a shutdown never waits on it.
pub struct Server {
    path: PathBuf,
    listener: tokio::net::UnixListener,
}

impl Server {
    /// Binds `path`, replacing a stale socket file (a steer that handed
    /// over has already stopped listening on it).
    pub fn bind(path: &Path) -> std::io::Result<Server> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let listener = tokio::net::UnixListener::bind(path)?;
        Ok(Server {
            path: path.to_path_buf(),
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for a new steer, hands over, returns once it is ready. A
    /// failed attempt is logged and the next one awaited. The exchange
    /// itself is blocking (SCM_RIGHTS) and bounded by `HANDOVER_TIMEOUT`.
    pub async fn serve_one(&self, sockets: impl Fn() -> std::io::Result<Vec<Socket>>) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let exchange = sockets().and_then(|sockets| {
                let stream = stream.into_std()?;
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(HANDOVER_TIMEOUT))?;
                stream.set_write_timeout(Some(HANDOVER_TIMEOUT))?;
                Ok((stream, sockets))
            });
            let result = match exchange {
                Ok((stream, sockets)) => {
                    tokio::task::spawn_blocking(move || send(stream, &sockets))
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(error = %e, "handover to the new steer failed; still serving")
                }
            }
        }
    }
}
