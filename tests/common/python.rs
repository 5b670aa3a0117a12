//! The Python interpreter for the cross-language tests: a venv made on
//! first use (and by .ci/run) in the target directory, with
//! tests/python/requirements.txt installed; SLUICE_PYTHON names another
//! interpreter that already has the requirements.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SLUICE_PYTHON") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("pyvenv");
    let py = venv.join("bin").join("python");
    let ready = venv.join(".requirements-installed");
    let wanted =
        std::fs::read_to_string(root.join("tests/python/requirements.txt")).unwrap_or_default();
    // The marker holds the requirements it installed (.ci/run writes an
    // empty one after installing them itself).
    let installed = std::fs::read_to_string(&ready).ok();
    if installed
        .as_deref()
        .is_none_or(|i| !i.is_empty() && i != wanted)
    {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is needed for the cross-language test");
        assert!(status.success(), "python3 -m venv failed");
        let status = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(root.join("tests/python/requirements.txt"))
            .status()
            .expect("pip");
        assert!(
            status.success(),
            "pip install of tests/python/requirements.txt failed"
        );
        std::fs::write(&ready, &wanted).expect("marker");
    }
    py
}
