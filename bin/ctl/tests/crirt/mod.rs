//! containerd's CRI plugin, driven over CRI v1 gRPC the way a kubelet
//! drives it. containerd (Debian's) runs inside a lab node's network
//! namespace with its own root, state, sockets and `opt` dir in a temporary
//! directory; the CRI plugin's CNI bin and conf dirs are private directories
//! there too (podwire, the reference `loopback` plugin and a podwire
//! conflist), and it pins pod network namespaces under its own state dir,
//! so nothing global is written (except libcni's result cache, under
//! names of this test's own sandbox ids, which DEL removes).

pub mod client;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::common::{plugin, run, text};
use super::rt::image;

/// The sandbox ("pause") image: the test busybox, sleeping.
pub const SANDBOX_IMAGE: &str = "localhost/pwt-pause:latest";
/// The CNI network name in the conflist (and so in podwire's veth alias).
pub const NETWORK: &str = "pwt-net";
/// The reference loopback plugin (Debian's containernetworking-plugins).
const LOOPBACK: &str = "/usr/lib/cni/loopback";

/// A private containerd with its CRI plugin on one node; stopped (by PID)
/// when dropped.
pub struct CriContainerd {
    dir: PathBuf,
    netns: String,
    daemon: Child,
    _tmp: tempfile::TempDir,
}

impl CriContainerd {
    pub fn start(netns: &str, mode: &str, agent_socket: &str) -> CriContainerd {
        assert!(
            Path::new(LOOPBACK).exists(),
            "{LOOPBACK} is missing: install containernetworking-plugins (scripts/deps.sh)"
        );
        let tmp = tempfile::Builder::new()
            .prefix("pwt-cri.")
            .tempdir()
            .expect("temp dir");
        let d = tmp.path().to_path_buf();
        for sub in ["root", "state", "opt", "cni-bin", "cni-conf", "image"] {
            std::fs::create_dir_all(d.join(sub)).expect("containerd dir");
        }
        std::fs::copy(plugin(), d.join("cni-bin/podwire")).expect("copy plugin");
        std::fs::copy(LOOPBACK, d.join("cni-bin/loopback")).expect("copy loopback");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{ "type": "podwire", "mode": mode, "agentSocket": agent_socket }],
        });
        std::fs::write(d.join("cni-conf/10-pwt.conflist"), conflist.to_string()).expect("conflist");
        let p = |s: &str| d.join(s).display().to_string();
        let conf = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  \
               sandbox_image = \"{SANDBOX_IMAGE}\"\n  \
               netns_mounts_under_state_dir = true\n  \
               restrict_oom_score_adj = true\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  Root = \"{runc}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  \
               bin_dir = \"{bin}\"\n  conf_dir = \"{cni_conf}\"\n  max_conf_num = 1\n",
            root = p("root"),
            state = p("state"),
            sock = p("sock"),
            opt = p("opt"),
            runc = p("runc"),
            bin = p("cni-bin"),
            cni_conf = p("cni-conf"),
        );
        let daemon = crate::rt::containerd::spawn_daemon(netns, &d, &conf);
        let ctd = CriContainerd {
            dir: d.clone(),
            netns: netns.to_string(),
            daemon,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ctd.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer: {}",
                ctd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The CRI plugin's images live in containerd's `k8s.io` namespace.
        let tar = image::oci_tar_named(&d.join("image"), SANDBOX_IMAGE, &["/bin/sleep", "3600"]);
        ctd.ok(&[
            "-n",
            "k8s.io",
            "image",
            "import",
            &tar.display().to_string(),
        ]);
        ctd
    }

    /// The PID of a sandbox's task (its pause process), whose network
    /// namespace is the pod's.
    pub fn sandbox_pid(&self, id: &str) -> i32 {
        let out = self.ok(&["-n", "k8s.io", "task", "ls"]);
        out.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(id))
                    .then(|| f.next().and_then(|p| p.parse().ok()))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no task for sandbox {id}:\n{out}"))
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.join("sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Output {
        run(Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("ctr")
            .arg("--address")
            .arg(self.sock())
            .args(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed:\nstdout: {}\nstderr: {}",
            text(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        text(&o)
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("containerd log:\n{}", self.log());
        }
        // Only when the test failed with sandboxes left: their tasks (each
        // a shim and a `sleep` outliving containerd) go by their exact ids.
        let tasks = text(&self.ctr(&["-n", "k8s.io", "task", "ls", "-q"]));
        for id in tasks.split_whitespace() {
            let _ = self.ctr(&["-n", "k8s.io", "task", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["-n", "k8s.io", "task", "rm", "-f", id]);
        }
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
        // What containerd mounted under its own directory (a sandbox's
        // /dev/shm, a pinned netns) and left: deepest first, by exact path,
        // so that the temporary directory can go.
        let prefix = format!("{}/", self.dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = run(Command::new("umount").arg(m));
        }
    }
}
