//! podman (Debian's, CNI backend) with a configuration, storage and CNI
//! directories all of its own in a temporary directory: nothing touches
//! the host's podman state. Every command runs inside a lab node's network
//! namespace through `nsenter --net` (`ip netns exec` remounts /sys, and
//! runc then finds no cgroup mount).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::super::common::{plugin, run, text};
use super::{image, Container};

/// The CNI network the conflist defines.
pub const NETWORK: &str = "pwt-net";

/// A private podman on one node; its image goes when dropped (its
/// containers go with their [`PodmanContainer`]).
pub struct Podman {
    // Dropped after `cli`'s last use: fields drop in order.
    cli: Cli,
    _dir: tempfile::TempDir,
}

/// How to run this podman: its configuration and the node.
#[derive(Clone)]
pub struct Cli {
    dir: PathBuf,
    netns: String,
}

impl Podman {
    /// Sets podman up on `netns` with a podwire network (`mode`, the node's
    /// agent at `agent_socket`), and imports the busybox image.
    pub fn new(netns: &str, mode: &str, agent_socket: &str) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("pwt-podman.")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        for sub in ["cni-bin", "cni-conf", "root", "runroot", "tmp", "var-lib"] {
            std::fs::create_dir(d.join(sub)).expect("podman dir");
        }
        // Copied, not linked: podman runs what is in its plugin dir.
        std::fs::copy(plugin(), d.join("cni-bin/podwire")).expect("copy plugin");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{ "type": "podwire", "mode": mode, "agentSocket": agent_socket }],
        });
        std::fs::write(d.join("cni-conf/pwt-net.conflist"), conflist.to_string())
            .expect("conflist");
        let p = |s: &str| d.join(s).display().to_string();
        // podman's default limits (nofile, nproc 1048576 and more) exceed
        // what a process may raise itself to on many build hosts; lower
        // limits always can be set.
        let conf = format!(
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             tmp_dir = \"{tmp}\"\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [\"{bin}\"]\n\
             network_config_dir = \"{conf}\"\n",
            tmp = p("tmp"),
            bin = p("cni-bin"),
            conf = p("cni-conf"),
        );
        std::fs::write(d.join("containers.conf"), conf).expect("containers.conf");
        // vfs: works on any filesystem, mounts nothing.
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            p("root"),
            p("runroot")
        );
        std::fs::write(d.join("storage.conf"), storage).expect("storage.conf");
        let pm = Podman {
            cli: Cli {
                dir: d.to_path_buf(),
                netns: netns.to_string(),
            },
            _dir: dir,
        };
        let tar = image::rootfs_tar(&pm.cli.dir);
        pm.cli.import(&tar);
        pm
    }

    /// Starts `script` in a detached container named `name` on the podwire
    /// network.
    pub fn run(&self, name: &str, script: &str) -> PodmanContainer {
        let c = PodmanContainer {
            cli: self.cli.clone(),
            name: name.to_string(),
            removed: false,
        };
        self.cli.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            NETWORK,
            image::IMAGE,
            "sh",
            "-c",
            script,
        ]);
        c
    }

    /// The names of the containers podman knows, one a line.
    pub fn containers(&self) -> String {
        self.cli.ok(&["ps", "-a", "--format", "{{.Names}}"])
    }
}

impl Cli {
    /// `podman` inside the node's namespace, with this configuration.
    fn podman(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        c
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        run(self.podman().args(args))
    }

    /// `podman import`. It keeps a blob cache in /var/lib/containers/cache
    /// whatever the storage root (podman 4.3), so it runs in a mount
    /// namespace of its own where a private directory hides
    /// /var/lib/containers (or /var/lib, where that does not exist yet):
    /// the host's cache is neither read nor written, nor created.
    fn import(&self, tar: &Path) {
        let over = if Path::new("/var/lib/containers").is_dir() {
            "/var/lib/containers"
        } else {
            "/var/lib"
        };
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .args(["unshare", "-m", "--propagation", "private", "sh", "-ec"])
            .arg("mount --bind \"$1\" \"$2\"; shift 2; exec podman \"$@\"")
            .arg("pwt-import")
            .arg(self.dir.join("var-lib"))
            .arg(over)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        let o = run(c.arg("import").arg(tar).arg(image::IMAGE));
        assert!(
            o.status.success(),
            "podman import failed:\nstdout: {}\nstderr: {}",
            text(&o),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(
            o.status.success(),
            "podman {args:?} failed:\nstdout: {}\nstderr: {}",
            text(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        text(&o)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cli.cmd(&["rmi", "-f", image::IMAGE]);
        // The temporary directory (storage, state, configuration) goes next.
    }
}

/// A container; removed (forcibly) when dropped unless the test removed it.
pub struct PodmanContainer {
    cli: Cli,
    name: String,
    removed: bool,
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.cli.cmd(&["rm", "-f", "-t", "0", &self.name]);
        }
    }
}

impl Container for PodmanContainer {
    fn output(&mut self) -> String {
        text(&self.cli.cmd(&["logs", &self.name]))
    }

    fn remove(&mut self, deadline: Instant) {
        // The script has ended (or ends now): podman tears the network
        // down when the container stops, and `rm` then forgets it.
        loop {
            let state = self
                .cli
                .ok(&["inspect", "-f", "{{.State.Status}}", &self.name]);
            if state.trim() == "exited" {
                break;
            }
            assert!(Instant::now() < deadline, "{} still {state}", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
        self.cli.ok(&["rm", &self.name]);
        self.removed = true;
    }
}
