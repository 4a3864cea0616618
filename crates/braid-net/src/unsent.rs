//! Messages a halted node had sent and its receivers had not acknowledged, kept beside its
//! checkpoint and sent again when it resumes.
//!
//! On a halt every node stops: a receiver leaves the messages it had not handled
//! unacknowledged, and their sender stops retrying. Without this file such a message would
//! be lost on both sides (the sender's state already counts it as sent), and a run without
//! deadlines would wait for it for ever after `--resume`. Receivers refuse or ignore a copy
//! of what they already hold.
//!
//! Format: `BRAIDUNSENT1\n`, a little-endian u32 count, then per message its receiver (u32),
//! its length (u64) and its bytes. Written atomically.

use std::path::{Path, PathBuf};

use braid_engine::wire::NodeId;

const MAGIC: &[u8] = b"BRAIDUNSENT1\n";

/// Most messages the file may hold.
const MAX_MESSAGES: usize = 1 << 20;

/// Where the unacknowledged messages of the node checkpointing at `checkpoint` are kept.
pub fn path_for(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint.as_os_str().to_owned();
    name.push(".unsent");
    PathBuf::from(name)
}

/// Writes `messages` (receiver, encoded frame) to `path`, or removes the file if there are
/// none.
pub fn save<'a>(
    path: &Path, messages: impl Iterator<Item = (NodeId, &'a [u8])>,
) -> Result<(), String> {
    let messages: Vec<(NodeId, &[u8])> = messages.collect();
    if messages.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot remove {}: {e}", path.display()))
            }
            _ => Ok(()),
        };
    }
    let count = u32::try_from(messages.len())
        .ok()
        .filter(|&c| c as usize <= MAX_MESSAGES)
        .ok_or_else(|| format!("{} unacknowledged messages is too many", messages.len()))?;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&count.to_le_bytes());
    for (to, bytes) in messages {
        out.extend_from_slice(&to.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    braid_engine::report::write_atomic(path, &out)
}

/// Reads the messages at `path` (none if there is no file); every length is checked against
/// `max_message_bytes` and the file before anything is allocated.
pub fn load(path: &Path, max_message_bytes: u64) -> Result<Vec<(NodeId, Vec<u8>)>, String> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let bad = |why: &str| format!("{}: {why}", path.display());
    let mut rest = data
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("not a file of unacknowledged messages"))?;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err(bad("cut short"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let word = |b: &[u8]| -> [u8; 8] {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        w
    };
    let count = u64::from_le_bytes(word(take(4)?)) as usize;
    if count > MAX_MESSAGES {
        return Err(bad("too many messages"));
    }
    let mut messages = Vec::new();
    for _ in 0..count {
        let to = u64::from_le_bytes(word(take(4)?));
        let len = u64::from_le_bytes(word(take(8)?));
        if len > max_message_bytes {
            return Err(bad("a message larger than network.max_message_mib"));
        }
        let bytes = take(usize::try_from(len).map_err(|_| bad("a message too large"))?)?;
        messages.push((to as NodeId, bytes.to_vec()));
    }
    if !rest.is_empty() {
        return Err(bad("bytes after the last message"));
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("checkpoint.ckpt"));
        assert!(
            load(&path, 100).unwrap().is_empty(),
            "no file: nothing to send"
        );
        let a = vec![1u8, 2, 3];
        let b = vec![9u8; 40];
        save(&path, [(3, a.as_slice()), (0, b.as_slice())].into_iter()).unwrap();
        assert_eq!(load(&path, 100).unwrap(), vec![(3, a), (0, b)]);
        assert!(load(&path, 10).unwrap_err().contains("larger"));
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 1]).unwrap();
        assert!(load(&path, 100).unwrap_err().contains("cut short"));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(&path, 100).is_err());
        // Nothing left unacknowledged: the file goes.
        save(&path, std::iter::empty()).unwrap();
        assert!(!path.exists());
    }
}
