//! Namespaces and processes the lab starts and stops — always by exact name
//! or PID, never by pattern.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

use crate::LabError;

fn run(what: &str, cmd: &mut Command) -> Result<String, LabError> {
    let out = cmd.output().map_err(|e| LabError::Command {
        what: what.into(),
        msg: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            what: what.into(),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn netns_path(name: &str) -> std::path::PathBuf {
    Path::new("/run/netns").join(name)
}

pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

pub fn netns_add(name: &str) -> Result<(), LabError> {
    if netns_exists(name) {
        return Err(LabError::Usage(format!("network namespace {name} already exists; is another lab using this name? (`podwirectl lab down` removes a lab)")));
    }
    run(
        &format!("ip netns add {name}"),
        Command::new("ip").args(["netns", "add", name]),
    )?;
    Ok(())
}

pub fn netns_del(name: &str) -> Result<(), LabError> {
    if !netns_exists(name) {
        return Ok(());
    }
    run(
        &format!("ip netns del {name}"),
        Command::new("ip").args(["netns", "del", name]),
    )?;
    Ok(())
}

/// Starts `program args…` inside `netns`, detached (own process group,
/// output to `log`), and returns its PID.
pub fn spawn_in(netns: &str, program: &Path, args: &[String], log: &Path) -> Result<i32, LabError> {
    let out = crate::state::create_private(log)?;
    let err = out
        .try_clone()
        .map_err(|e| LabError::State(e.to_string()))?;
    let mut cmd = Command::new("ip");
    // A clean environment: the lab's processes take their settings from
    // their flags, never from whatever the operator's shell holds (agents
    // read WARM_IP_TARGET, AWS_ACCESS_KEY_ID, ETCD_* and the like).
    cmd.env_clear().env(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
    );
    if let Some(level) = std::env::var_os("PODWIRE_LOG") {
        cmd.env("PODWIRE_LOG", level);
    }
    let child = cmd
        .args(["netns", "exec", netns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::Command {
            what: format!("start {}", program.display()),
            msg: e.to_string(),
        })?;
    i32::try_from(child.id()).map_err(|_| LabError::State("pid out of range".into()))
}

/// Is `pid` alive and ours (its command line mentions `marker`)?
pub fn is_ours(pid: i32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false)
}

fn reap(pid: i32) {
    // Our own children become zombies until waited for.
    let _ = nix::sys::wait::waitpid(
        Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}

fn alive(pid: i32) -> bool {
    reap(pid);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // State Z (zombie) counts as gone.
    !stat.is_empty()
        && !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
}

/// Stops a process we started: SIGTERM, then SIGKILL after two seconds.
pub fn stop(pid: i32, marker: &str) {
    if !is_ours(pid, marker) {
        return;
    }
    let p = Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = kill(p, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits until `ready()` or the deadline, failing early when `pid` died.
pub fn wait_for(
    what: &str,
    pid: i32,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        let tail = || {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        if !alive(pid) {
            return Err(LabError::Command {
                what: what.into(),
                msg: format!(
                    "exited during start-up; last log lines ({}):\n{}",
                    log.display(),
                    tail()
                ),
            });
        }
        if Instant::now() >= deadline {
            return Err(LabError::Command {
                what: what.into(),
                msg: format!("not ready after {timeout:?}; last log lines:\n{}", tail()),
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Is TCP `port` of `ip` accepting connections, seen from `ns`?
pub fn port_open(ns: &Path, ip: std::net::Ipv4Addr, port: u16) -> bool {
    podwire_netlink::netns::run_in(ns, || {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((ip, port)),
            Duration::from_millis(300),
        )
        .is_ok()
    })
    .unwrap_or(false)
}
