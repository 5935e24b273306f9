//! Python tools from PyPI for tests: a virtualenv under the target directory with
//! exactly the pinned packages a test names, made once and shared by later runs.

use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::process::Command;

/// The root of a virtualenv holding `packages` (pinned requirement specifiers, e.g.
/// `schemathesis==4.32.5`); its programs are in `bin/`.
///
/// The directory is named after `name` and a hash of `packages`, so changing a pin
/// makes a new virtualenv instead of reusing a stale one. nextest runs each test in
/// its own process: a file lock keeps two from building the same one at once, and a
/// marker written last makes an interrupted install start over.
///
/// # Panics
/// If `python3 -m venv` or `pip install` fails (with pip's output).
pub fn venv(name: &str, packages: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut hasher = DefaultHasher::new();
    packages.hash(&mut hasher);
    let venv = dir.join(format!("{name}-venv-{:016x}", hasher.finish()));
    std::fs::create_dir_all(&dir).expect("create CARGO_TARGET_TMPDIR");
    let lock = File::create(dir.join(format!("{name}-venv.lock"))).expect("create venv lock");
    lock.lock().expect("lock venv");
    let installed = venv.join(".installed");
    if !installed.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 (apt-get install python3-venv)");
        assert!(
            made.success(),
            "python3 -m venv failed: apt-get install python3-venv"
        );
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages)
            .output()
            .expect("run pip");
        assert!(
            pip.status.success(),
            "pip install {packages:?} failed:\n{}{}",
            String::from_utf8_lossy(&pip.stdout),
            String::from_utf8_lossy(&pip.stderr)
        );
        std::fs::write(&installed, packages.join("\n")).expect("write venv marker");
    }
    venv
}
