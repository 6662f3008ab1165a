//! `MemStore`: a medium in memory, for tests and for the firmware's fakes.
//!
//! It can inject faults the way a real medium fails: a power cut after N
//! writes (every later write fails and the unsynced tail of each file is
//! lost) and a capacity limit (writes past it fail with `NoSpace`).

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::{Entry, EntryKind, Store, StoreError};

#[derive(Debug, Clone, Default)]
struct MemFile {
    data: Vec<u8>,
    /// Length that survived the last `sync` (what a power cut leaves).
    synced: Vec<u8>,
    /// Synced (or renamed into place) at least once: a file system may lose a file
    /// created since, not one whose entry was made durable.
    durable: bool,
}

/// An in-memory medium.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    files: BTreeMap<String, MemFile>,
    dirs: BTreeMap<String, ()>,
    /// Writes left before a simulated power cut (`None`: never).
    writes_left: Option<u64>,
    capacity: Option<u64>,
    /// Number of successful mutating operations so far.
    pub writes: u64,
}

impl MemStore {
    /// An empty medium without faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fail every mutating operation after `n` more have succeeded.
    pub fn cut_power_after(&mut self, n: u64) {
        self.writes_left = Some(n);
    }

    /// Limit the total bytes the medium can hold.
    pub fn set_capacity(&mut self, bytes: Option<u64>) {
        self.capacity = bytes;
    }

    /// What survives a power cut now: only synced content, no fault armed
    /// (a file created and never synced is left empty).
    pub fn after_power_loss(&self) -> MemStore {
        self.after_power_loss_keeping(true)
    }

    /// [`after_power_loss`](Self::after_power_loss) on a file system that loses a file
    /// created and never synced altogether (a FAT volume whose directory entry was never
    /// written back).
    pub fn after_power_loss_dropping_new_files(&self) -> MemStore {
        self.after_power_loss_keeping(false)
    }

    fn after_power_loss_keeping(&self, new_files: bool) -> MemStore {
        let mut files = BTreeMap::new();
        for (k, f) in self.files.iter().filter(|(_, f)| new_files || f.durable) {
            files.insert(
                k.clone(),
                MemFile {
                    data: f.synced.clone(),
                    synced: f.synced.clone(),
                    durable: f.durable,
                },
            );
        }
        MemStore {
            files,
            dirs: self.dirs.clone(),
            writes_left: None,
            capacity: self.capacity,
            writes: 0,
        }
    }

    /// Mutable access to a file's bytes (for corrupting it in tests).
    pub fn file_mut(&mut self, path: &str) -> Option<&mut Vec<u8>> {
        self.files.get_mut(path).map(|f| &mut f.data)
    }

    fn used(&self) -> u64 {
        self.files.values().map(|f| f.data.len() as u64).sum()
    }

    fn mutate(&mut self) -> Result<(), StoreError> {
        match self.writes_left {
            Some(0) => Err(StoreError::Io("simulated power cut".to_string())),
            Some(ref mut n) => {
                *n -= 1;
                self.writes += 1;
                Ok(())
            }
            None => {
                self.writes += 1;
                Ok(())
            }
        }
    }

    fn grow_check(&self, path: &str, new_len: u64) -> Result<(), StoreError> {
        if let Some(cap) = self.capacity {
            let cur = self.files.get(path).map_or(0, |f| f.data.len() as u64);
            if new_len > cur && self.used() + (new_len - cur) > cap {
                return Err(StoreError::NoSpace);
            }
        }
        Ok(())
    }
}

fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

impl Store for MemStore {
    fn list(&mut self, dir: &str) -> Result<Vec<Entry>, StoreError> {
        if !dir.is_empty() && !self.dirs.contains_key(dir) {
            return Err(StoreError::NotFound);
        }
        let mut out = Vec::new();
        for d in self
            .dirs
            .keys()
            .filter(|d| parent(d) == dir && !d.is_empty())
        {
            out.push(Entry {
                name: d.rsplit('/').next().unwrap_or(d).to_string(),
                kind: EntryKind::Dir,
                len: 0,
            });
        }
        for (f, m) in self.files.iter().filter(|(f, _)| parent(f) == dir) {
            out.push(Entry {
                name: f.rsplit('/').next().unwrap_or(f).to_string(),
                kind: EntryKind::File,
                len: m.data.len() as u64,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn len(&mut self, path: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.files.get(path).map(|f| f.data.len() as u64))
    }

    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        let f = self.files.get(path).ok_or(StoreError::NotFound)?;
        let len = f.data.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let n = buf.len().min((len - offset) as usize);
        let o = offset as usize;
        buf[..n].copy_from_slice(&f.data[o..o + n]);
        Ok(n)
    }

    fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| StoreError::Io("write past 2^64".to_string()))?;
        self.grow_check(path, end)?;
        self.mutate()?;
        let f = self.files.entry(path.to_string()).or_default();
        if f.data.len() < end as usize {
            f.data.resize(end as usize, 0);
        }
        f.data[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }

    fn set_len(&mut self, path: &str, len: u64) -> Result<(), StoreError> {
        self.grow_check(path, len)?;
        self.mutate()?;
        self.files
            .entry(path.to_string())
            .or_default()
            .data
            .resize(len as usize, 0);
        Ok(())
    }

    fn create_dir_all(&mut self, path: &str) -> Result<(), StoreError> {
        self.mutate()?;
        let mut acc = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            self.dirs.insert(acc.clone(), ());
        }
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        self.mutate()?;
        let f = self.files.remove(from).ok_or(StoreError::NotFound)?;
        // A rename is durable as a whole (directory update), like fsync'd rename.
        let f = MemFile {
            synced: f.data.clone(),
            data: f.data,
            durable: true,
        };
        self.files.insert(to.to_string(), f);
        Ok(())
    }

    fn remove_file(&mut self, path: &str) -> Result<(), StoreError> {
        self.mutate()?;
        self.files.remove(path);
        Ok(())
    }

    fn remove_dir(&mut self, path: &str) -> Result<(), StoreError> {
        self.mutate()?;
        let inside = alloc::format!("{path}/");
        if self.files.keys().any(|f| f.starts_with(&inside))
            || self.dirs.keys().any(|d| d.starts_with(&inside))
        {
            return Err(StoreError::Io(alloc::format!(
                "{path}: directory not empty"
            )));
        }
        self.dirs.remove(path);
        Ok(())
    }

    fn sync(&mut self, path: &str) -> Result<(), StoreError> {
        if matches!(self.writes_left, Some(0)) {
            return Err(StoreError::Io("simulated power cut".to_string()));
        }
        if let Some(f) = self.files.get_mut(path) {
            f.synced = f.data.clone();
            f.durable = true;
        }
        Ok(())
    }

    fn free_space(&mut self) -> Result<Option<u64>, StoreError> {
        Ok(self.capacity.map(|c| c.saturating_sub(self.used())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_cut_keeps_only_synced_data() {
        let mut s = MemStore::new();
        s.create_dir_all("a/b").unwrap();
        s.write_at("a/b/f", 0, b"one").unwrap();
        s.sync("a/b/f").unwrap();
        s.cut_power_after(1);
        s.write_at("a/b/f", 3, b"two").unwrap();
        assert!(s.write_at("a/b/f", 6, b"three").is_err());
        let mut after = s.after_power_loss();
        let mut buf = [0u8; 8];
        let n = after.read_at("a/b/f", 0, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"one");
        assert_eq!(after.list("a").unwrap()[0].name, "b");
    }

    #[test]
    fn capacity_gives_no_space() {
        let mut s = MemStore::new();
        s.set_capacity(Some(10));
        s.write_at("f", 0, b"12345").unwrap();
        assert_eq!(s.write_at("f", 5, b"123456"), Err(StoreError::NoSpace));
        assert_eq!(s.free_space().unwrap(), Some(5));
    }
}
