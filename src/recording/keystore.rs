//! The keystore: one SQLite file (WAL, so the CLI can read it while the proxy runs) mapping each
//! recording to its wrapped data key, KEK id, subject hash, times, file path and state. The DEK lives
//! only here: deleting an entry makes every copy of the recording unreadable, backups included
//! (crypto-shredding).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::keys::{KeyRing, WrappedKey};

/// One recording's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub route: String,
    pub path: PathBuf,
    pub wrapped: WrappedKey,
    pub subject_hash: Option<[u8; 32]>,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// `recording`, `complete` or `failed`.
    pub state: String,
    pub bytes: i64,
    pub duration_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("keystore {path}: {source}")]
    Db {
        path: String,
        source: rusqlite::Error,
    },
    #[error("keystore {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub struct Keystore {
    conn: Mutex<Connection>,
    path: String,
}

/// SQLite's page cache for the keystore, in KiB (its default is 2,000). A call touches the keystore
/// twice, at its start and its end, a few pages each time; the kernel's page cache keeps the file
/// close at hand anyway. With the default, every recording's new pages stayed in the proxy's heap
/// until the cache was full: ~340 bytes per recorded call, up to 2 MB (docs/PERFORMANCE.md,
/// nineteenth session).
const CACHE_KIB: i64 = 128;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    path TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped_dek BLOB NOT NULL,
    subject_hash BLOB,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0,
    duration_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS recordings_subject ON recordings(subject_hash);
CREATE INDEX IF NOT EXISTS recordings_expires ON recordings(expires_ms);
";

impl Keystore {
    /// Opens (creating it 0600 if needed) the keystore at `path`.
    pub fn open(path: &Path) -> Result<Self, KeystoreError> {
        let shown = path.display().to_string();
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|source| KeystoreError::Io {
                    path: shown.clone(),
                    source,
                })?;
        }
        let db = |source| KeystoreError::Db {
            path: shown.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: shown,
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, KeystoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|source| KeystoreError::Db {
            path: self.path.clone(),
            source,
        })
    }

    pub fn insert(&self, e: &Entry) -> Result<(), KeystoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO recordings (id, route, path, kek_id, wrapped_dek, subject_hash, created_ms, expires_ms, state, bytes, duration_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    e.id,
                    e.route,
                    e.path.display().to_string(),
                    e.wrapped.kek_id,
                    e.wrapped.blob,
                    e.subject_hash.map(|h| h.to_vec()),
                    e.created_ms,
                    e.expires_ms,
                    e.state,
                    e.bytes,
                    e.duration_ms
                ],
            )
            .map(|_| ())
        })
    }

    pub fn finish(
        &self,
        id: &str,
        state: &str,
        bytes: i64,
        duration_ms: i64,
    ) -> Result<(), KeystoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE recordings SET state = ?2, bytes = ?3, duration_ms = ?4 WHERE id = ?1",
                params![id, state, bytes, duration_ms],
            )
            .map(|_| ())
        })
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
        let subject: Option<Vec<u8>> = r.get(5)?;
        Ok(Entry {
            id: r.get(0)?,
            route: r.get(1)?,
            path: PathBuf::from(r.get::<_, String>(2)?),
            wrapped: WrappedKey {
                kek_id: r.get(3)?,
                blob: r.get(4)?,
            },
            subject_hash: subject.and_then(|s| s.try_into().ok()),
            created_ms: r.get(6)?,
            expires_ms: r.get(7)?,
            state: r.get(8)?,
            bytes: r.get(9)?,
            duration_ms: r.get(10)?,
        })
    }

    const COLUMNS: &'static str = "id, route, path, kek_id, wrapped_dek, subject_hash, created_ms, expires_ms, state, bytes, duration_ms";

    pub fn get(&self, id: &str) -> Result<Option<Entry>, KeystoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {} FROM recordings WHERE id = ?1", Self::COLUMNS),
                params![id],
                Self::row,
            )
            .optional()
        })
    }

    fn select(
        &self,
        filter: &str,
        p: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Entry>, KeystoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {} FROM recordings {filter} ORDER BY created_ms",
                Self::COLUMNS
            ))?;
            let rows = st.query_map(p, Self::row)?;
            rows.collect()
        })
    }

    pub fn list(&self) -> Result<Vec<Entry>, KeystoreError> {
        self.select("", &[])
    }

    pub fn by_subject(&self, hash: &[u8; 32]) -> Result<Vec<Entry>, KeystoreError> {
        self.select("WHERE subject_hash = ?1", &[&hash.to_vec()])
    }

    pub fn expired(&self, now_ms: i64) -> Result<Vec<Entry>, KeystoreError> {
        self.select("WHERE expires_ms <= ?1", &[&now_ms])
    }

    /// Deletes an entry: from here on its recording cannot be decrypted anywhere.
    pub fn delete(&self, id: &str) -> Result<bool, KeystoreError> {
        self.with(|c| {
            c.execute("DELETE FROM recordings WHERE id = ?1", params![id])
                .map(|n| n > 0)
        })
    }

    /// Re-wraps every entry not under the active KEK; returns how many. Entries whose KEK is not in
    /// the ring are left as they are and reported.
    pub fn rewrap(&self, ring: &KeyRing) -> Result<(usize, Vec<String>), KeystoreError> {
        let mut done = 0;
        let mut stuck = Vec::new();
        for e in self.list()? {
            if e.wrapped.kek_id == ring.active_id() {
                continue;
            }
            match ring.unwrap(&e.wrapped) {
                Ok(dek) => {
                    let w = ring.wrap(&dek);
                    self.with(|c| {
                        c.execute(
                            "UPDATE recordings SET kek_id = ?2, wrapped_dek = ?3 WHERE id = ?1",
                            params![e.id, w.kek_id, w.blob],
                        )
                    })?;
                    done += 1;
                }
                Err(_) => stuck.push(e.id),
            }
        }
        Ok((done, stuck))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyBytes;
    use std::collections::HashMap;

    fn entry(ring: &KeyRing, id: &str, subject: Option<[u8; 32]>, expires_ms: i64) -> Entry {
        Entry {
            id: id.into(),
            route: "media".into(),
            path: format!("/r/{id}.vxr").into(),
            wrapped: ring.wrap(&KeyBytes::random()),
            subject_hash: subject,
            created_ms: 1,
            expires_ms,
            state: "recording".into(),
            bytes: 0,
            duration_ms: 0,
        }
    }

    /// The page cache is capped well below the table: entries written long before are read back
    /// from the file, whole, by id and by subject.
    #[test]
    fn a_keystore_larger_than_its_page_cache_finds_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let ks = Keystore::open(&dir.path().join("keystore.sqlite")).unwrap();
        let cache: i64 = ks
            .with(|c| c.query_row("PRAGMA cache_size", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(cache, -CACHE_KIB, "the cap is in KiB (negative), not pages");
        let ring = KeyRing::new(
            "k1".into(),
            HashMap::from([("k1".to_string(), KeyBytes::random())]),
        );
        let entries: Vec<Entry> = (0..2_000u32)
            .map(|i| {
                let mut subject = [0u8; 32];
                subject[..4].copy_from_slice(&i.to_le_bytes());
                entry(&ring, &format!("{i:032x}"), Some(subject), i64::from(i))
            })
            .collect();
        for e in &entries {
            ks.insert(e).unwrap();
        }
        let pages: i64 = ks
            .with(|c| c.query_row("PRAGMA page_count", [], |r| r.get(0)))
            .unwrap();
        let page_size: i64 = ks
            .with(|c| c.query_row("PRAGMA page_size", [], |r| r.get(0)))
            .unwrap();
        assert!(
            pages * page_size > 2 * CACHE_KIB * 1024,
            "the keystore ({pages} pages) outgrew its cache"
        );
        for e in &entries {
            assert_eq!(ks.get(&e.id).unwrap().as_ref(), Some(e));
            assert_eq!(
                ks.by_subject(&e.subject_hash.unwrap()).unwrap(),
                vec![e.clone()]
            );
        }
    }

    #[test]
    fn entries_round_trip_and_are_found_by_subject_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore.sqlite");
        let ks = Keystore::open(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let ring = KeyRing::new(
            "k1".into(),
            HashMap::from([("k1".to_string(), KeyBytes::random())]),
        );
        ks.insert(&entry(&ring, "a", Some([1; 32]), 100)).unwrap();
        ks.insert(&entry(&ring, "b", None, 200)).unwrap();
        ks.finish("a", "complete", 10, 20).unwrap();
        let a = ks.get("a").unwrap().unwrap();
        assert_eq!(
            (a.state.as_str(), a.bytes, a.duration_ms),
            ("complete", 10, 20)
        );
        assert_eq!(ks.by_subject(&[1; 32]).unwrap().len(), 1);
        assert_eq!(ks.expired(150).unwrap().len(), 1);
        assert!(ks.delete("a").unwrap());
        assert!(ks.get("a").unwrap().is_none());
        let second = Keystore::open(&path).unwrap();
        assert_eq!(
            second.list().unwrap().len(),
            1,
            "another process reads the same file"
        );
    }

    #[test]
    fn rewrap_moves_entries_to_the_active_kek() {
        let dir = tempfile::tempdir().unwrap();
        let ks = Keystore::open(&dir.path().join("k.sqlite")).unwrap();
        let k1 = KeyBytes::random();
        let old = KeyRing::new("k1".into(), HashMap::from([("k1".to_string(), k1.clone())]));
        let e = entry(&old, "a", None, 1);
        let dek = old.unwrap(&e.wrapped).unwrap();
        ks.insert(&e).unwrap();
        let both = KeyRing::new(
            "k2".into(),
            HashMap::from([
                ("k1".to_string(), k1),
                ("k2".to_string(), KeyBytes::random()),
            ]),
        );
        assert_eq!(ks.rewrap(&both).unwrap(), (1, vec![]));
        let moved = ks.get("a").unwrap().unwrap();
        assert_eq!(moved.wrapped.kek_id, "k2");
        assert_eq!(both.unwrap(&moved.wrapped).unwrap().expose(), dek.expose());
    }
}
