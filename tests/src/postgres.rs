//! A PostgreSQL cluster of a test's own, from Debian's postgresql binaries (trust
//! authentication on 127.0.0.1, a free port, fsync on), stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::free_listen;

/// A PostgreSQL cluster of the test's own (Debian's postgresql binaries), stopped on drop.
pub struct Postgres {
    dir: PathBuf,
    pg_ctl: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    pub fn bin() -> PathBuf {
        let root = Path::new("/usr/lib/postgresql");
        let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}: install Debian's postgresql (scripts/lib.sh lists it)",
                    root.display()
                )
            })
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .collect();
        versions.sort();
        versions
            .pop()
            .expect("no PostgreSQL server under /usr/lib/postgresql: install postgresql")
    }

    pub fn command(&self, program: &Path) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    pub fn start(tag: &str) -> Postgres {
        let bin = Postgres::bin();
        // PostgreSQL refuses to run as root: then the cluster belongs to the postgres user, which
        // must be able to reach its directory. A private $TMPDIR (mode 0700, e.g. mktemp -d)
        // would stop it at the parent, so as root the cluster lives directly under /tmp.
        let as_postgres = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        let base = if as_postgres {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir().join("tuk-e2e")
        };
        let dir = base.join(format!("tuk-pg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            assert!(Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success());
        }
        let port = free_listen().port();
        let pg = Postgres {
            dir: dir.clone(),
            pg_ctl: bin.join("pg_ctl"),
            port,
            as_postgres,
        };
        let data = dir.join("data");
        let out = pg
            .command(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "tuk", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            dir.display()
        );
        let out = pg
            .command(&pg.pg_ctl)
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .args(["-l"])
            .arg(dir.join("log"))
            .args(["-o", &opts, "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        pg
    }

    /// The URL `tuk verifier serve --db` takes.
    pub fn url(&self) -> String {
        format!("postgres://tuk@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command(&self.pg_ctl)
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Postgres {
    /// Runs `sql` with `psql` on the cluster and returns its unaligned, tuples-only output
    /// (one row a line, columns separated by `|`); panics on failure.
    pub fn psql(&self, sql: &str) -> String {
        let out = self
            .command(&Postgres::bin().join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "tuk",
            ])
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}
