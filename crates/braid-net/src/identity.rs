//! Node identities: ed25519 key files.
//!
//! A key file holds one line, `braid-ed25519-v1 <64 hex digits>`: the 32-byte ed25519 secret.
//! It is written atomically with owner-only permissions. The libp2p peer id, which the run's
//! allow-list names, is derived from the public key.

use std::fs;
use std::io::Write;
use std::path::Path;

use libp2p::identity::Keypair;
use libp2p::PeerId;

use crate::NetError;

const TAG: &str = "braid-ed25519-v1";

/// A fresh random identity.
pub fn generate() -> Keypair {
    Keypair::generate_ed25519()
}

/// The peer id of `key`.
pub fn peer_id(key: &Keypair) -> PeerId {
    key.public().to_peer_id()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string (None if it is not hex).
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Writes `key` to `path` (temp file, fsync, rename; mode 0600 on Unix). Refuses to
/// overwrite an existing file.
pub fn save(key: &Keypair, path: &Path) -> Result<(), NetError> {
    let io = |e: std::io::Error| NetError::Key(format!("cannot write {}: {e}", path.display()));
    if path.exists() {
        return Err(NetError::Key(format!(
            "{} already exists; braid keygen never overwrites a key",
            path.display()
        )));
    }
    let ed = key
        .clone()
        .try_into_ed25519()
        .map_err(|e| NetError::Key(format!("not an ed25519 key: {e}")))?;
    let secret = ed.secret();
    let line = format!("{TAG} {}\n", hex(secret.as_ref()));
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(d) = dir {
        fs::create_dir_all(d).map_err(io)?;
    }
    let tmp = path.with_extension("key.tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(line.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Reads a key file written by [`save`].
pub fn load(path: &Path) -> Result<Keypair, NetError> {
    let text = fs::read_to_string(path)
        .map_err(|e| NetError::Key(format!("cannot read key file {}: {e}", path.display())))?;
    let bad =
        |why: &str| NetError::Key(format!("{} is not a braid key file: {why}", path.display()));
    let mut parts = text.split_whitespace();
    if parts.next() != Some(TAG) {
        return Err(bad(&format!("it does not start with {TAG:?}")));
    }
    let secret = parts
        .next()
        .and_then(unhex)
        .filter(|b| b.len() == 32)
        .ok_or_else(|| bad("expected 64 hex digits"))?;
    if parts.next().is_some() {
        return Err(bad("trailing data"));
    }
    Keypair::ed25519_from_bytes(secret).map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/a.key");
        let k = generate();
        save(&k, &path).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(peer_id(&back), peer_id(&k));
        assert!(save(&generate(), &path).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load(&dir.path().join("nope.key")).unwrap_err().to_string();
        assert!(missing.contains("cannot read"), "{missing}");
        for body in [
            "",
            "hello",
            "braid-ed25519-v1 abcd",
            "braid-ed25519-v1 zz00000000000000000000000000000000000000000000000000000000000000",
            "braid-ed25519-v1 0000000000000000000000000000000000000000000000000000000000000000 x",
        ] {
            let p = dir.path().join("bad.key");
            fs::write(&p, body).unwrap();
            let e = load(&p).unwrap_err().to_string();
            assert!(e.contains("not a braid key file"), "{body:?}: {e}");
        }
    }
}
