//! A real OCI registry on loopback for tests and demos: Debian's `docker-registry` (the CNCF
//! distribution registry 2.8) with a throwaway configuration and storage directory, no auth,
//! stopped (and its directory removed) on drop.
//!
//! `scripts/registry` does the same for the demo from the shell.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

const READY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum LocalRegistryError {
    #[error(
        "`{0}` not found: install the registry with `apt-get install docker-registry` \
         (or set TUK_DOCKER_REGISTRY to its path)"
    )]
    NotInstalled(String),
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("docker-registry did not answer GET /v2/ on {addr} within {secs} s; its log:\n{log}")]
    NotReady {
        addr: SocketAddr,
        secs: u64,
        log: String,
    },
}

/// A running loopback registry.
pub struct LocalRegistry {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl LocalRegistry {
    /// Starts a registry on a free loopback port with its storage in a new temporary
    /// directory.
    pub fn start() -> Result<LocalRegistry, LocalRegistryError> {
        LocalRegistry::start_with("")
    }

    /// [`LocalRegistry::start`] with `extra` appended to the YAML configuration (top-level
    /// sections such as `auth:`).
    pub fn start_with(extra: &str) -> Result<LocalRegistry, LocalRegistryError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut last = None;
        // The port is free when we look; another process may take it before the registry
        // binds it, so try a few.
        for _ in 0..3 {
            let dir = std::env::temp_dir().join(format!(
                "tuk-registry-{}-{}-{nanos}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let port = free_port().map_err(|source| LocalRegistryError::Io {
                path: dir.clone(),
                source,
            })?;
            match LocalRegistry::start_in(&dir, port, extra) {
                Ok(r) => return Ok(r),
                Err(e @ LocalRegistryError::NotReady { .. }) => {
                    let _ = fs::remove_dir_all(&dir);
                    last = Some(e);
                }
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
        }
        Err(last.expect("tried at least once"))
    }

    /// Starts a registry on `127.0.0.1:port` with `dir` for its configuration, log and
    /// storage (and `extra` appended to its configuration); waits until it answers
    /// `GET /v2/` (200, or 401 when `extra` configures auth). `dir` is removed on drop.
    pub fn start_in(
        dir: &Path,
        port: u16,
        extra: &str,
    ) -> Result<LocalRegistry, LocalRegistryError> {
        let program = binary();
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LocalRegistryError::Io { path, source }
        };
        fs::create_dir_all(dir.join("storage")).map_err(io(dir))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.join("config.yml");
        fs::write(&config, config_yaml(&dir.join("storage"), addr) + extra).map_err(io(&config))?;
        let log_path = dir.join("registry.log");
        let log = fs::File::create(&log_path).map_err(io(&log_path))?;
        let log2 = log.try_clone().map_err(io(&log_path))?;
        let child = Command::new(&program)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => LocalRegistryError::NotInstalled(program.clone()),
                _ => LocalRegistryError::Io {
                    path: PathBuf::from(&program),
                    source: e,
                },
            })?;
        let mut registry = LocalRegistry {
            child,
            addr,
            dir: dir.to_owned(),
        };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&mut self) -> Result<(), LocalRegistryError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let url = format!("http://{}/v2/", self.addr);
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if agent
                .get(&url)
                .call()
                .is_ok_and(|r| matches!(r.status().as_u16(), 200 | 401))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(LocalRegistryError::NotReady {
            addr: self.addr,
            secs: READY_TIMEOUT.as_secs(),
            log: fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default(),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, for references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The registry's storage root (its `rootdirectory`).
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// Where the filesystem driver keeps the bytes of blob `sha256:<hex>`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(hex.get(..2).unwrap_or(hex))
            .join(hex)
            .join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn binary() -> String {
    std::env::var("TUK_DOCKER_REGISTRY").unwrap_or_else(|_| "docker-registry".to_owned())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The registry's configuration: filesystem storage, loopback only, no auth, quiet.
pub fn config_yaml(storage: &Path, addr: SocketAddr) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n  secret: tuk-local-registry-not-a-secret\n\
         \x20 headers:\n    X-Content-Type-Options: [nosniff]\n",
        storage.display()
    )
}
