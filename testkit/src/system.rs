//! The programs tests run that are not part of this workspace (`redis-server`, `node` with
//! Debian's `node-sockjs-client`, `chromium`, `debootstrap`): [`require`] finds one on `PATH`,
//! and when it is missing installs its Debian package with `apt-get` (as root: what the README's
//! one test command does on a fresh machine). Installs are serialized across test binaries by a
//! file lock, and `apt-get update` runs once before the first install that needs it. A program
//! that cannot be had fails the test with the reason; nothing is skipped. Python packages come
//! from PyPI into virtual environments under the target directory ([`pip_tool`], [`stomp_py`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Serializes installs within this process; the file lock serializes them across processes.
static INSTALLING: Mutex<()> = Mutex::new(());

/// The path of `program`, installing Debian's `package` for it first if it is not on `PATH`.
/// Panics, saying why, when it is missing and cannot be installed.
pub fn require(program: &str, package: &str) -> PathBuf {
    if let Some(found) = which(program) {
        return found;
    }
    install(&[package]);
    which(program).unwrap_or_else(|| panic!("{program} is still not on PATH after installing {package}"))
}

/// Makes sure Debian's `package` is installed (for a package that is not a program: a library
/// of scripts such as `node-sockjs-client`); `probe` is a file it installs.
pub fn require_file(probe: &str, package: &str) -> PathBuf {
    let probe = Path::new(probe);
    if !probe.exists() {
        install(&[package]);
    }
    assert!(probe.exists(), "{} is still missing after installing {package}", probe.display());
    probe.to_owned()
}

/// `program`'s path on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| {
        std::fs::metadata(candidate).is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        })
    })
}

fn install(packages: &[&str]) {
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let lock = std::env::temp_dir().join("stampede-testkit-apt.lock");
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    assert!(
        root && which("apt-get").is_some(),
        "{packages:?} missing: install them (apt-get install {}) or run the tests as root on Debian, \
         where the test kit installs them",
        packages.join(" ")
    );
    // Under util-linux's flock: one apt-get at a time across test binaries.
    let apt = |args: &[&str]| {
        Command::new("flock")
            .arg(&lock)
            .arg("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap_or_else(|e| panic!("apt-get: {e}"))
    };
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    if apt(&args).status.success() {
        return;
    }
    // The package lists may be missing or stale on a fresh machine.
    let update = apt(&["update", "-qq"]);
    assert!(update.status.success(), "apt-get update failed: {}", String::from_utf8_lossy(&update.stderr));
    let installed = apt(&args);
    assert!(
        installed.status.success(),
        "apt-get install {} failed: {}",
        packages.join(" "),
        String::from_utf8_lossy(&installed.stderr)
    );
}

/// `program` of a Python virtual environment `target/<name>-venv` holding `requirement` (a pip
/// requirement such as `stomp.py==9.0.0`), made with Debian's python3 the first time (installing
/// python3 and python3-venv when missing) and kept for later runs: `cargo test` needs only PyPI.
pub fn pip_tool(name: &str, requirement: &str, program: &str) -> PathBuf {
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let venv = target.join(format!("{name}-venv"));
    let ready = venv.join(".ready");
    if std::fs::read_to_string(&ready).is_ok_and(|r| r == requirement) {
        return venv.join("bin").join(program);
    }
    let python3 = require("python3", "python3");
    let make = || Command::new(&python3).arg("-m").arg("venv").arg(&venv).status().is_ok_and(|s| s.success());
    // Debian's python3 makes venvs (with pip) only with python3-venv.
    if !make() {
        require_file("/usr/share/doc/python3-venv", "python3-venv");
        let _ = std::fs::remove_dir_all(&venv);
        assert!(make(), "python3 -m venv {} failed", venv.display());
    }
    let output = Command::new(venv.join("bin/python3"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement])
        .output()
        .unwrap_or_else(|e| panic!("pip: {e}"));
    assert!(
        output.status.success(),
        "pip install {requirement} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(&ready, requirement).expect("mark the venv ready");
    venv.join("bin").join(program)
}

/// The stomp.py release the suites drive Stampede with: the interop test (`node/tests`) and the
/// chat example's backend (`examples/chat/backend.py`, in `cluster-tests`).
pub const STOMP_PY: &str = "stomp.py==9.0.0";

/// A python3 with [`STOMP_PY`], from [`pip_tool`]'s virtual environment `target/<venv>-venv`.
/// Each test binary names its own: two binaries making one environment at once would race (the
/// lock that serializes [`pip_tool`] is per process).
pub fn stomp_py(venv: &str) -> PathBuf {
    pip_tool(venv, STOMP_PY, "python3")
}

/// The flags every headless Chromium of the suite starts with (no sandbox: tests run as root;
/// no GPU, no /dev/shm, no first-run dialogs).
pub const CHROMIUM_HEADLESS: [&str; 5] =
    ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"];
