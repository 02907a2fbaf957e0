//! Child processes of the tests: `tuk` services that announce themselves with a JSON ready line
//! (`tuk verifier serve`, `tuk gateway`), `tuk run` read line by line, and the clean-up that
//! leaves no `tuk` (and no QEMU) behind when a test fails half way.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A service process that prints one JSON line `{"event": "ready", "listen": ..., ...}` on
/// stdout once it serves. Killed (SIGKILL) on drop if still running; [`Service::stop`] stops it
/// with SIGTERM and checks that it exits cleanly.
pub struct Service {
    child: Child,
    /// Kept open so the service never writes into a closed pipe.
    stdout: Option<BufReader<ChildStdout>>,
    /// The ready line.
    pub ready: Value,
}

impl Service {
    /// Spawns `cmd` with stdout piped and stderr inherited, and reads its first stdout line.
    /// Panics (and kills the process) unless that line is JSON with `"event": "ready"`.
    pub fn start(mut cmd: Command) -> Service {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut service = Service {
            child,
            stdout: Some(BufReader::new(stdout)),
            ready: Value::Null,
        };
        let mut line = String::new();
        if let Some(out) = service.stdout.as_mut() {
            out.read_line(&mut line).expect("read the ready line");
        }
        service.ready = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{cmd:?} printed {line:?}, not a ready line: {e}"));
        assert_eq!(service.ready["event"], "ready", "{}", service.ready);
        service
    }

    /// The ready line's `listen` (`IP:PORT`).
    pub fn listen(&self) -> String {
        self.ready["listen"]
            .as_str()
            .unwrap_or_else(|| panic!("the ready line names no listen address: {}", self.ready))
            .to_owned()
    }

    /// `http://` and the ready line's `listen`.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen())
    }

    /// Sends SIGTERM and waits up to 10 s; panics unless the service exited with success.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "the service exited with {status}");
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("the service did not stop within 10 s of SIGTERM");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stdout = None;
    }
}

/// Kills a child (`tuk run`) if the test fails half way, so no `tuk` and no QEMU is left
/// behind: SIGTERM first so `tuk` stops its QEMU, then SIGKILL 3 s later as the last resort.
/// Does nothing to a child that has exited.
pub struct Reap(pub Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").arg(self.0.id().to_string()).status();
            thread::sleep(Duration::from_secs(3));
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends SIGTERM to `child`; panics if `kill` fails.
pub fn sigterm(child: &Child) {
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
}

/// Lines of a child's stdout (which must be piped), as they come; the channel closes at EOF.
pub fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Like [`lines_of`], each line parsed as JSON; panics (in the reading thread, which closes
/// the channel) on a line that is not.
pub fn json_lines_of(child: &mut Child) -> mpsc::Receiver<Value> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<Value>();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).expect("stdout lines are JSON");
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects a child's stderr (which must be piped) in the background; the handle returns it
/// all at EOF.
pub fn stderr_of(child: &mut Child) -> thread::JoinHandle<String> {
    let mut err = child.stderr.take().expect("piped stderr");
    thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    })
}

/// Waits for `child` to exit, polling every 50 ms; panics if it has not within `within` (a
/// [`Reap`] holding it then stops it).
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < until, "tuk did not exit within {within:?}");
        thread::sleep(Duration::from_millis(50));
    }
}
