//! containerd (Debian's) with its own root, state, sockets and `opt` dir
//! in a temporary directory, started inside a lab node's network namespace
//! and stopped by PID; and `ctr run --rm --cni` containers on it.
//!
//! `ctr run --cni` reads the one global /etc/cni/net.d and runs plugins
//! from /opt/cni/bin. It runs here in a mount namespace of its own
//! (`unshare -m`) where private directories are bind-mounted over /etc/cni
//! and /opt: nothing global is written, and two tests never see each
//! other's (or the host's) CNI files, so no lock is needed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::super::common::{plugin, run, text};
use super::{image, Container};

/// A private containerd on one node; stopped (by PID) when dropped.
pub struct Containerd {
    cli: Ctr,
    daemon: Child,
    _dir: tempfile::TempDir,
}

/// How to reach this containerd: its directory (socket, CNI dirs) and the
/// node.
#[derive(Clone)]
pub struct Ctr {
    dir: PathBuf,
    netns: String,
}

/// Writes `conf` as `dir/config.toml` and starts containerd with it inside
/// the node's namespace, logging to `dir/containerd.log`.
pub fn spawn_daemon(netns: &str, dir: &std::path::Path, conf: &str) -> std::process::Child {
    std::fs::write(dir.join("config.toml"), conf).expect("config.toml");
    let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn containerd")
}

impl Containerd {
    pub fn start(netns: &str, mode: &str, agent_socket: &str) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("pwt-ctd.")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        for sub in ["root", "state", "opt", "cni-opt/cni/bin", "cni-etc/net.d"] {
            std::fs::create_dir_all(d.join(sub)).expect("containerd dir");
        }
        std::fs::copy(plugin(), d.join("cni-opt/cni/bin/podwire")).expect("copy plugin");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "pwt-net",
            "plugins": [{ "type": "podwire", "mode": mode, "agentSocket": agent_socket }],
        });
        std::fs::write(
            d.join("cni-etc/net.d/10-pwt.conflist"),
            conflist.to_string(),
        )
        .expect("conflist");
        let p = |s: &str| d.join(s).display().to_string();
        // No CRI plugin (these tests drive containerd through ctr), and the
        // `opt` plugin away from /opt/containerd.
        let conf = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = p("root"),
            state = p("state"),
            sock = p("sock"),
            opt = p("opt"),
        );
        let daemon = spawn_daemon(netns, d, &conf);
        let ctd = Containerd {
            cli: Ctr {
                dir: d.to_path_buf(),
                netns: netns.to_string(),
            },
            daemon,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ctd.cli.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer on {}: {}",
                ctd.cli.sock().display(),
                ctd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let tar = image::oci_tar(&ctd.cli.dir);
        ctd.cli.ok(&["image", "import", &tar.display().to_string()]);
        ctd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.cli.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.cli.ok(args)
    }

    /// Starts `ctr run --rm --cni` of `script` in a container `id`; the
    /// container's output is collected as it comes.
    pub fn run(&self, id: &str, script: &str) -> CtrRun {
        self.cli.run(id, script)
    }
}

impl Ctr {
    fn sock(&self) -> PathBuf {
        self.dir.join("sock")
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        run(Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("ctr")
            .arg("--address")
            .arg(self.sock())
            .args(args))
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed:\nstdout: {}\nstderr: {}",
            text(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        text(&o)
    }

    fn run(&self, id: &str, script: &str) -> CtrRun {
        let d = &self.dir;
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["unshare", "-m", "--propagation", "private", "sh", "-ec"])
            // Positional parameters keep the paths out of the shell text.
            .arg("mount --bind \"$1\" /opt; mount --bind \"$2\" /etc/cni; shift 2; exec ctr \"$@\"")
            .arg("pwt-ctr")
            .arg(d.join("cni-opt"))
            .arg(d.join("cni-etc"))
            .arg("--address")
            .arg(self.sock())
            .args(["run", "--rm", "--cni", image::IMAGE, id, "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ctr run");
        let out = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        CtrRun {
            ctd: self.clone(),
            id: id.to_string(),
            child: Some(child),
            out,
        }
    }
}

/// /etc/cni must exist to be mounted over: podman's Debian package makes
/// it; a host without it gets an empty one (the only global change).
pub fn ensure_etc_cni() {
    if !Path::new("/etc/cni").exists() {
        std::fs::create_dir_all("/etc/cni").expect("/etc/cni");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.daemon.id()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // The temporary directory (root, state, image) goes next.
    }
}

/// A `ctr run`; its task is killed and its container removed when dropped
/// before it ended.
pub struct CtrRun {
    ctd: Ctr,
    id: String,
    child: Option<Child>,
    out: Arc<Mutex<String>>,
}

impl Container for CtrRun {
    fn output(&mut self) -> String {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn remove(&mut self, deadline: Instant) {
        // `ctr run --rm` ends when the task does, after the CNI DEL and the
        // container's removal.
        let mut child = self.child.take().expect("ctr run once");
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait ctr") {
                break s;
            }
            if Instant::now() >= deadline {
                self.child = Some(child);
                let out = self.output();
                panic!("ctr run {} did not end: {out}", self.id);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let out = self.output();
        assert!(status.success(), "ctr run {}: {status}: {out}", self.id);
    }
}

impl Drop for CtrRun {
    fn drop(&mut self) {
        // Only when the test failed before the container ended.
        if let Some(mut child) = self.child.take() {
            let _ = self.ctd.ctr(&["task", "kill", "-s", "SIGKILL", &self.id]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = self.ctd.ctr(&["task", "rm", "-f", &self.id]);
            let _ = self.ctd.ctr(&["container", "rm", &self.id]);
        }
    }
}
