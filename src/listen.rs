//! Where the sidecar listens: a TCP address, or a Unix-domain socket for backends
//! on the same host (no TCP stack on the round trip). Owns the socket file's
//! lifecycle: a stale file left by a crashed sidecar is replaced, a live one is
//! never stolen, the file is made group-accessible only, and it is removed on
//! shutdown.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::net::{TcpListener, UnixListener};

/// The prefix that makes a `--listen` value a Unix-domain socket path.
const UNIX_PREFIX: &str = "unix:";
/// Mode of the socket file: the sidecar's user and group may connect, nobody else.
const SOCKET_MODE: u32 = 0o660;
/// The longest path a Unix-domain socket address holds (`sun_path`, less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A `--listen` value: `127.0.0.1:8180` or `unix:/run/cdap-authz.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if let Some(path) = value.strip_prefix(UNIX_PREFIX) {
            if path.is_empty() {
                return Err("a Unix socket address needs a path: unix:/run/cdap-authz.sock".into());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        value.parse().map(Self::Tcp).map_err(|_| {
            format!("`{value}` is neither an address like 127.0.0.1:8180 nor unix:PATH")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "{UNIX_PREFIX}{}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: ListenAddr, source: io::Error },
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("another process already listens on {}", .0.display())]
    InUse(PathBuf),
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    /// The listener and its socket file, removed when this is dropped.
    Unix(UnixListener, SocketFile),
}

impl Listener {
    /// Binds `addr`; for a Unix socket, replaces a stale socket file first.
    pub async fn bind(addr: &ListenAddr) -> Result<Self, ListenError> {
        let bind_error = |source| ListenError::Bind {
            addr: addr.clone(),
            source,
        };
        match addr {
            ListenAddr::Tcp(socket) => TcpListener::bind(socket)
                .await
                .map(Self::Tcp)
                .map_err(bind_error),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = bind_restricted(path).map_err(bind_error)?;
                Ok(Self::Unix(listener, SocketFile::new(path.clone())))
            }
        }
    }

    /// The address actually bound (the port chosen, for port 0).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Self::Tcp(listener) => listener.local_addr().map(ListenAddr::Tcp),
            Self::Unix(_, file) => Ok(ListenAddr::Unix(file.path.clone())),
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::Tcp(listener)
    }
}

/// A socket file this process created; deleted on drop if it is still the one at
/// its path (another sidecar may have replaced it, its own, since: a stale socket
/// after this one was removed by hand).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl SocketFile {
    fn new(path: PathBuf) -> Self {
        let identity = file_identity(&path);
        Self { path, identity }
    }
}

/// The device and inode of the file at `path` (not following a symlink).
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.identity.is_some() && file_identity(&self.path) == self.identity {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a socket file nobody listens on (left by a crash); refuses to touch a
/// live socket or anything that is not a socket.
fn remove_stale_socket(path: &Path) -> Result<(), ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(ListenError::NotASocket(path.to_owned()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ListenError::InUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| ListenError::Bind {
        addr: ListenAddr::Unix(path.to_owned()),
        source,
    })
}

/// Binds the socket in a private directory (mode 0700) beside `path`, restricts it
/// to the group, then links it into place: there is no moment at which the socket
/// is at `path` with the umask's looser mode, for another local user to connect.
/// The link fails if anything appeared at `path` since it was checked: of two
/// sidecars started together, the second fails to start, rather than replacing the
/// first's socket and leaving it unreachable.
fn bind_restricted(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = tempfile::Builder::new()
        .prefix(".")
        .rand_bytes(6)
        .tempdir_in(parent)?;
    let staged = private.path().join("s");
    let staged_length = staged.as_os_str().len();
    if staged_length > MAX_SOCKET_PATH {
        return Err(io::Error::other(format!(
            "the socket is bound through {} ({staged_length} bytes, over the {MAX_SOCKET_PATH} \
             a socket path may have): use a shorter path",
            staged.display()
        )));
    }
    let listener = UnixListener::bind(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    std::fs::hard_link(&staged, path)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values_parse_as_tcp_or_unix() {
        assert_eq!(
            "127.0.0.1:8180".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:8180".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/cdap.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/run/cdap.sock".into()))
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
    }

    /// What appears at the path between the stale-socket check and the bind (a
    /// second sidecar's socket) is never replaced.
    #[tokio::test]
    async fn binding_never_replaces_what_appeared_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authz.sock");
        std::fs::write(&path, "someone else's").unwrap();
        let error = bind_restricted(&path).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists, "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "the staging directory is removed: {left:?}");
    }

    /// A socket this process bound, removed by hand and replaced by another
    /// sidecar's, is left to that sidecar when this one stops.
    #[tokio::test]
    async fn stopping_leaves_a_socket_that_replaced_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authz.sock");
        let ours = Listener::bind(&ListenAddr::Unix(path.clone()))
            .await
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let theirs = Listener::bind(&ListenAddr::Unix(path.clone()))
            .await
            .unwrap();
        drop(ours);
        assert!(path.exists(), "the other sidecar's socket is left");
        drop(theirs);
        assert!(!path.exists(), "its own is removed");
    }

    #[tokio::test]
    async fn a_path_too_long_to_stage_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let room = 99usize.saturating_sub(dir.path().as_os_str().len() + 1);
        let parent = dir.path().join("d".repeat(room));
        std::fs::create_dir(&parent).unwrap();
        let path = parent.join("s1");
        assert!(path.as_os_str().len() <= MAX_SOCKET_PATH);
        let error = bind_restricted(&path).unwrap_err().to_string();
        assert!(error.contains("use a shorter path"), "{error}");
    }
}
