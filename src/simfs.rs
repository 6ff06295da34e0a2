//! A simulated file system for crash-consistency tests (redb's crash_consistency
//! backend, in spirit): it keeps what is durable apart from what is only written, and a
//! power cut at a chosen sync point throws the unsynced part away, the way a kernel may.
//!
//! Model (pessimistic, like ext4 without `data=journal`): a file's contents are durable
//! only up to its last `sync_file`; a directory entry change (create, rename, remove) is
//! durable once its directory is synced. At a power cut, each unsynced entry change may or
//! may not have reached the disk (seeded coin flips, in order), and each file with unsynced
//! contents keeps its synced contents, a torn prefix of the new ones, or all of them.
//! Directories themselves are durable as soon as they are created. Every `sync_file`,
//! `sync_dir` and [`SimFs::barrier`] is a sync point; after the cut every call fails with
//! EIO until [`SimFs::reboot`]. Used through [`crate::store::Fs`]; no real I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::rng::Rng;
use crate::store::Fs;

#[derive(Clone, Debug)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
    modified: SystemTime,
}

#[derive(Clone, Debug)]
enum Change {
    Link(PathBuf, u64),
    Unlink(PathBuf),
}

impl Change {
    fn dir(&self) -> Option<&Path> {
        match self {
            Change::Link(p, _) | Change::Unlink(p) => p.parent(),
        }
    }
}

#[derive(Debug)]
struct State {
    entries: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    inodes: HashMap<u64, Inode>,
    pending: Vec<Change>,
    next_ino: u64,
    syncs: u64,
    cut_at: Option<u64>,
    dead: bool,
    rng: Rng,
}

/// The simulated file system; clones share one state.
#[derive(Clone, Debug)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

fn eio() -> io::Error {
    io::Error::other("power lost (simulated)")
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: not found", p.display()),
    )
}

impl SimFs {
    /// An empty file system whose power-cut choices follow `seed`.
    pub fn new(seed: u64) -> SimFs {
        SimFs {
            state: Arc::new(Mutex::new(State {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
                dirs: BTreeSet::new(),
                inodes: HashMap::new(),
                pending: Vec::new(),
                next_ino: 1,
                syncs: 0,
                cut_at: None,
                dead: false,
                rng: Rng::new(seed),
            })),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts the power at sync point `n` (0-based), before it takes effect.
    pub fn cut_at(&self, n: u64) {
        self.st().cut_at = Some(n);
    }

    /// Sync points passed so far.
    pub fn sync_points(&self) -> u64 {
        self.st().syncs
    }

    /// Whether the power has been cut (and not yet restored).
    pub fn is_dead(&self) -> bool {
        self.st().dead
    }

    /// Restores power: the file system now holds what survived the cut.
    pub fn reboot(&self) {
        let mut s = self.st();
        s.dead = false;
        s.cut_at = None;
    }

    /// A sync point of the caller's own (say, a catalogue commit): `Ok` means it is durable.
    pub fn barrier(&self) -> io::Result<()> {
        self.st().sync_point()
    }

    fn op<T>(&self, f: impl FnOnce(&mut State) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.st();
        if s.dead {
            return Err(eio());
        }
        f(&mut s)
    }
}

impl State {
    fn sync_point(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(eio());
        }
        let n = self.syncs;
        self.syncs += 1;
        if self.cut_at == Some(n) {
            self.power_cut();
            return Err(eio());
        }
        Ok(())
    }

    fn power_cut(&mut self) {
        // Unsynced entry changes: each reached the disk or not, in order.
        let pending = std::mem::take(&mut self.pending);
        for c in pending {
            if self.rng.below(2) == 0 {
                continue;
            }
            match c {
                Change::Link(p, ino) => {
                    self.durable.insert(p, ino);
                }
                Change::Unlink(p) => {
                    self.durable.remove(&p);
                }
            }
        }
        // Unsynced contents: old, torn or whole.
        let inos: Vec<u64> = self.inodes.keys().copied().collect();
        for ino in inos {
            let choice = self.rng.below(3);
            let cut = self.rng.below(u64::MAX);
            let node = self.inodes.get_mut(&ino).expect("listed");
            if node.data != node.synced {
                node.data = match choice {
                    0 => node.synced.clone(),
                    1 => node.data[..(cut % (node.data.len() as u64 + 1)) as usize].to_vec(),
                    _ => node.data.clone(),
                };
            }
            node.synced = node.data.clone();
        }
        self.entries = self.durable.clone();
        self.dead = true;
    }

    fn file(&self, p: &Path) -> io::Result<&Inode> {
        self.entries
            .get(p)
            .and_then(|i| self.inodes.get(i))
            .ok_or_else(|| not_found(p))
    }
}

impl Fs for SimFs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.op(|s| Ok(s.file(path)?.data.clone()))
    }

    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.op(|s| {
            let ino = s.next_ino;
            s.next_ino += 1;
            s.inodes.insert(
                ino,
                Inode {
                    data: bytes.to_vec(),
                    synced: Vec::new(),
                    modified: SystemTime::now(),
                },
            );
            s.entries.insert(path.to_path_buf(), ino);
            s.pending.push(Change::Link(path.to_path_buf(), ino));
            Ok(())
        })
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.st();
        let ino = *s.entries.get(path).ok_or_else(|| not_found(path))?;
        s.sync_point()?;
        if let Some(n) = s.inodes.get_mut(&ino) {
            n.synced = n.data.clone();
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.op(|s| {
            let ino = s.entries.remove(from).ok_or_else(|| not_found(from))?;
            s.entries.insert(to.to_path_buf(), ino);
            s.pending.push(Change::Unlink(from.to_path_buf()));
            s.pending.push(Change::Link(to.to_path_buf(), ino));
            Ok(())
        })
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.st();
        s.sync_point()?;
        let (now, later): (Vec<Change>, Vec<Change>) = std::mem::take(&mut s.pending)
            .into_iter()
            .partition(|c| c.dir() == Some(dir));
        for c in now {
            match c {
                Change::Link(p, ino) => {
                    s.durable.insert(p, ino);
                }
                Change::Unlink(p) => {
                    s.durable.remove(&p);
                }
            }
        }
        s.pending = later;
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.op(|s| {
            s.entries.remove(path).ok_or_else(|| not_found(path))?;
            s.pending.push(Change::Unlink(path.to_path_buf()));
            Ok(())
        })
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        self.op(|s| Ok(s.file(path)?.data.len() as u64))
    }

    fn modified(&self, path: &Path) -> io::Result<SystemTime> {
        self.op(|s| Ok(s.file(path)?.modified))
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<(String, bool)>> {
        self.op(|s| {
            if !s.dirs.contains(dir) {
                return Err(not_found(dir));
            }
            let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
            let mut out: Vec<(String, bool)> = s
                .entries
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| name(p).map(|n| (n, false)))
                .collect();
            out.extend(
                s.dirs
                    .iter()
                    .filter(|p| p.parent() == Some(dir))
                    .filter_map(|p| name(p).map(|n| (n, true))),
            );
            Ok(out)
        })
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.op(|s| {
            let mut d = Some(dir);
            while let Some(p) = d {
                if p.as_os_str().is_empty() {
                    break;
                }
                s.dirs.insert(p.to_path_buf());
                d = p.parent();
            }
            Ok(())
        })
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.st().dirs.contains(path)
    }
}
