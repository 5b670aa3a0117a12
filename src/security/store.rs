//! A single node's security state, in `DATA_DIR/security.json`.
//!
//! The file holds one line with the CRC-32 of the JSON that follows it, and
//! is replaced atomically (temporary file, sync, rename, directory sync)
//! by every change, so after a power loss it holds the state before or
//! after the change, never part of one; a damaged file refuses to start the
//! node rather than silently dropping ACLs. A cluster keeps the same state
//! in its metadata log instead.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::state::{SecurityCommand, SecurityRefusal, SecurityState, TokenRecord};
use crate::storage::{write_file_atomic, Fs, StorageError};

/// The file's name in the data directory.
pub const SECURITY_FILE: &str = "security.json";
/// The first line's tag (format version 1).
const HEADER: &str = "sluice-security v1 crc32=";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file.
    #[error(transparent)]
    Io(#[from] StorageError),
    /// The file is not what this version writes, or its checksum fails.
    #[error("{path}: {why}; restore it from a backup or remove it (which drops every user, token, ACL and quota)")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The state and the file it lives in.
pub struct LocalStore {
    fs: Fs,
    path: PathBuf,
    /// The state as the file holds it. Held while a change is written, so
    /// changes reach the file in the order they apply (callers are on the
    /// blocking pool).
    state: Mutex<SecurityState>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn encode(path: &Path, state: &SecurityState) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(state).map_err(|e| StoreError::Damaged {
        path: path.to_path_buf(),
        why: format!("the state could not be encoded: {e}"),
    })?;
    let mut out = format!("{HEADER}{:08x}\n", crc32fast::hash(&json)).into_bytes();
    out.extend_from_slice(&json);
    Ok(out)
}

fn decode(path: &Path, bytes: &[u8]) -> Result<SecurityState, StoreError> {
    let damaged = |why: String| StoreError::Damaged {
        path: path.to_path_buf(),
        why,
    };
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| damaged("no header line".into()))?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| damaged("bad header".into()))?;
    let crc = header
        .strip_prefix(HEADER)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| damaged(format!("unknown header '{}'", header.escape_default())))?;
    let json = &bytes[nl + 1..];
    let actual = crc32fast::hash(json);
    if actual != crc {
        return Err(damaged(format!(
            "checksum {actual:08x} does not match the stored {crc:08x}"
        )));
    }
    serde_json::from_slice(json).map_err(|e| damaged(format!("unreadable: {e}")))
}

impl LocalStore {
    /// Opens (or starts empty) the store in `dir`. Blocking.
    pub fn open(fs: Fs, dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(SECURITY_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => decode(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SecurityState::default(),
            Err(e) => return Err(StorageError::io("reading", &path, e).into()),
        };
        Ok(Self {
            fs,
            path,
            state: Mutex::new(state),
        })
    }

    /// A copy of the state.
    pub fn state(&self) -> SecurityState {
        self.state.lock().clone()
    }

    /// Applies `cmd` and makes it durable before returning; the outer
    /// error is the file's, the inner the command's refusal. Blocking.
    pub fn apply(
        &self,
        cmd: &SecurityCommand,
    ) -> Result<Result<(usize, SecurityState), SecurityRefusal>, StoreError> {
        let mut state = self.state.lock();
        let mut next = state.clone();
        let changed = match next.apply(cmd) {
            Ok(n) => n,
            Err(refusal) => return Ok(Err(refusal)),
        };
        if next != *state {
            write_file_atomic(&*self.fs, &self.path, &encode(&self.path, &next)?)?;
            *state = next;
        }
        Ok(Ok((changed, state.clone())))
    }
}

/// Where `sluice token issue --bootstrap` leaves tokens for the node to
/// import (in its data directory).
pub const BOOTSTRAP_DIR: &str = "security-bootstrap";

/// Leaves `record` for the node using `data_dir` to import (at start, and
/// within seconds while it runs). Blocking.
pub fn write_bootstrap_token(
    fs: &Fs,
    data_dir: &Path,
    record: &TokenRecord,
) -> Result<PathBuf, StoreError> {
    let dir = data_dir.join(BOOTSTRAP_DIR);
    let created = !dir.exists();
    fs.create_dir_all(&dir)
        .map_err(|e| StorageError::io("creating", &dir, e))?;
    if created {
        crate::storage::sync_dir(&**fs, data_dir)?;
    }
    let path = dir.join(format!("{}.json", record.id));
    let json = serde_json::to_vec(record).map_err(|e| StoreError::Damaged {
        path: path.clone(),
        why: e.to_string(),
    })?;
    write_file_atomic(&**fs, &path, &json)?;
    Ok(path)
}

/// Tokens waiting to be imported, with their files. Unreadable files are
/// skipped with a warning (and left for an operator). Blocking.
pub fn pending_bootstrap_tokens(data_dir: &Path) -> Vec<(PathBuf, TokenRecord)> {
    let dir = data_dir.join(BOOTSTRAP_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<TokenRecord>(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => out.push((path, r)),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable bootstrap token file")
            }
        }
    }
    out
}

/// Removes an imported token's file. Blocking.
pub fn remove_bootstrap_token(fs: &Fs, path: &Path) -> Result<(), StoreError> {
    fs.remove_file(path)
        .map_err(|e| StorageError::io("removing", path, e))?;
    if let Some(dir) = path.parent() {
        crate::storage::sync_dir(&**fs, dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::acl::*;
    use crate::storage::{os_fs, CrashFs};

    fn acl(name: &str) -> AclBinding {
        AclBinding {
            principal: "User:a".into(),
            resource_type: ResourceType::Topic,
            pattern: PatternType::Literal,
            name: name.into(),
            operation: Operation::Read,
            permission: Permission::Allow,
        }
    }

    #[test]
    fn survives_reopen_and_refuses_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(os_fs(), dir.path()).unwrap();
        s.apply(&SecurityCommand::AddAcls {
            acls: vec![acl("t")],
        })
        .unwrap()
        .unwrap();
        let reopened = LocalStore::open(os_fs(), dir.path()).unwrap();
        assert_eq!(reopened.state(), s.state());
        assert_eq!(reopened.state().acls.len(), 1);
        let path = dir.path().join(SECURITY_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        let err = LocalStore::open(os_fs(), dir.path()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn bootstrap_tokens_wait_in_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(pending_bootstrap_tokens(dir.path()).is_empty());
        let (token, record) = crate::security::state::new_token("User:admin", 1, None, "boot");
        let fs = os_fs();
        write_bootstrap_token(&fs, dir.path(), &record).unwrap();
        let pending = pending_bootstrap_tokens(dir.path());
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].1, record);
        assert_eq!(
            pending[0].1.sha256,
            crate::security::state::token_hash(&token)
        );
        remove_bootstrap_token(&fs, &pending[0].0).unwrap();
        assert!(pending_bootstrap_tokens(dir.path()).is_empty());
    }

    /// After a power loss at any point, the file holds the state before or
    /// after each acknowledged change: every change that returned is there.
    #[test]
    fn power_loss_keeps_every_acknowledged_change() {
        for seed in 0..40u64 {
            let dir = tempfile::tempdir().unwrap();
            let crash = CrashFs::new(dir.path()).unwrap();
            let s = LocalStore::open(crash.clone(), dir.path()).unwrap();
            let acked = 1 + (seed % 5) as usize;
            for i in 0..acked {
                s.apply(&SecurityCommand::AddAcls {
                    acls: vec![acl(&format!("t{i}"))],
                })
                .unwrap()
                .unwrap();
            }
            let image = crash.crash_image(seed).unwrap();
            let after = tempfile::tempdir().unwrap();
            image.write_to(after.path()).unwrap();
            let reopened = LocalStore::open(os_fs(), after.path()).unwrap();
            assert_eq!(reopened.state().acls.len(), acked, "seed {seed}");
        }
    }
}
