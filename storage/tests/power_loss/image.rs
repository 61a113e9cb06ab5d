//! The disk a power cut could leave, rebuilt from the journal of what the engine changed
//! (in the spirit of redb's crash backend and LazyFS). What a sync made durable stays;
//! everything after it may or may not have reached the disk:
//! - a file's unsynced writes are each kept, dropped or torn at 512-byte sectors (any subset
//!   of its sectors), independently, as the kernel may write pages back in any order;
//!   unsynced length changes are each kept or dropped;
//! - a directory's unsynced name changes (creates, renames, removals) reach the disk as a
//!   prefix of the order they were made in (a journaling file system commits metadata in
//!   order), possibly none, until the directory is synced;
//! - a file whose name did not reach the disk is gone with its data.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use spool_storage::journal::Change;

const SECTOR: usize = 512;

/// A small deterministic generator (xorshift64*), so a failing seed replays exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(usize),
}

#[derive(Clone, Debug)]
enum Data {
    Write(u64, Vec<u8>),
    SetLen(u64),
    Extend(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    /// What a sync made durable.
    durable: Vec<u8>,
    /// What the process sees.
    live: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<Data>,
}

#[derive(Clone, Debug)]
enum Name {
    Link(PathBuf, Node),
    Rename(PathBuf, PathBuf),
    Unlink(PathBuf),
}

/// The state of the disk after some prefix of the journal: what is durable, what the
/// process sees, and what is in between.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    inodes: Vec<Inode>,
    durable: BTreeMap<PathBuf, Node>,
    live: BTreeMap<PathBuf, Node>,
    /// Name changes not yet durable, by directory.
    pending: BTreeMap<PathBuf, Vec<Name>>,
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn apply_data(bytes: &mut Vec<u8>, d: &Data) {
    match d {
        Data::Write(at, data) => {
            let end = *at as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*at as usize..end].copy_from_slice(data);
        }
        Data::SetLen(len) => bytes.resize(*len as usize, 0),
        Data::Extend(len) => {
            if bytes.len() < *len as usize {
                bytes.resize(*len as usize, 0);
            }
        }
    }
}

/// Applies a name change to a namespace; removing a directory removes what is under it.
fn apply_name(names: &mut BTreeMap<PathBuf, Node>, n: &Name) {
    let remove_under = |names: &mut BTreeMap<PathBuf, Node>, p: &Path| {
        names.retain(|k, _| !k.starts_with(p));
    };
    match n {
        Name::Link(p, node) => {
            remove_under(names, p);
            names.insert(p.clone(), *node);
        }
        Name::Rename(from, to) => {
            if let Some(node) = names.remove(from) {
                remove_under(names, to);
                names.insert(to.clone(), node);
            }
        }
        Name::Unlink(p) => remove_under(names, p),
    }
}

impl Disk {
    fn file(&mut self, p: &Path) -> &mut Inode {
        match self.live.get(p) {
            Some(Node::File(i)) => &mut self.inodes[*i],
            other => panic!("{} is {other:?}, not a file the process has", p.display()),
        }
    }

    fn rename_node(&mut self, n: Name, dir: PathBuf) {
        apply_name(&mut self.live, &n);
        self.pending.entry(dir).or_default().push(n);
    }

    fn data(&mut self, p: &Path, d: Data) {
        let inode = self.file(p);
        apply_data(&mut inode.live, &d);
        inode.pending.push(d);
    }

    /// Applies one recorded change.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::CreateDir(p) => self.rename_node(Name::Link(p.clone(), Node::Dir), parent(p)),
            Change::Create(p) => {
                self.inodes.push(Inode::default());
                let node = Node::File(self.inodes.len() - 1);
                self.rename_node(Name::Link(p.clone(), node), parent(p));
            }
            Change::Write(p, at, data) => self.data(p, Data::Write(*at, data.clone())),
            Change::SetLen(p, len) => self.data(p, Data::SetLen(*len)),
            Change::Extend(p, len) => self.data(p, Data::Extend(*len)),
            Change::Sync(p) => {
                let inode = self.file(p);
                inode.durable = inode.live.clone();
                inode.pending.clear();
            }
            Change::SyncDir(p) => {
                for n in self.pending.remove(p).unwrap_or_default() {
                    apply_name(&mut self.durable, &n);
                }
            }
            Change::Rename(from, to) => {
                assert_eq!(parent(from), parent(to), "renames stay in one directory");
                self.rename_node(Name::Rename(from.clone(), to.clone()), parent(to));
            }
            Change::Remove(p) => self.rename_node(Name::Unlink(p.clone()), parent(p)),
            Change::SyncAll => {
                for inode in &mut self.inodes {
                    inode.durable = inode.live.clone();
                    inode.pending.clear();
                }
                self.durable = self.live.clone();
                self.pending.clear();
            }
        }
    }

    /// One disk a power cut could leave now, chosen by `rng`, written under `root`.
    pub fn crash_image(&self, rng: &mut Rng, root: &Path) {
        let mut names = self.durable.clone();
        for changes in self.pending.values() {
            let kept = rng.below(changes.len() as u64 + 1) as usize;
            for n in &changes[..kept] {
                apply_name(&mut names, n);
            }
        }
        for (path, node) in &names {
            // A name is reachable only through directories that reached the disk too.
            let reachable = path
                .ancestors()
                .skip(1)
                .all(|a| a.as_os_str().is_empty() || names.get(a) == Some(&Node::Dir));
            if !reachable {
                continue;
            }
            let at = root.join(path);
            match node {
                Node::Dir => fs::create_dir_all(&at).unwrap(),
                Node::File(i) => {
                    let bytes = self.survivor(&self.inodes[*i], rng);
                    fs::create_dir_all(at.parent().unwrap()).unwrap();
                    fs::write(&at, bytes).unwrap();
                }
            }
        }
    }

    /// What of a file's unsynced changes a power cut leaves.
    fn survivor(&self, inode: &Inode, rng: &mut Rng) -> Vec<u8> {
        let mut bytes = inode.durable.clone();
        for d in &inode.pending {
            match d {
                Data::Write(at, data) => match rng.below(3) {
                    0 => {}
                    1 => apply_data(&mut bytes, d),
                    _ => {
                        // Torn: any subset of the sectors the write touched.
                        let first = *at as usize / SECTOR;
                        let last = (*at as usize + data.len()).div_ceil(SECTOR);
                        for sector in first..last {
                            if rng.chance(1, 2) {
                                let from = (sector * SECTOR).max(*at as usize);
                                let to = ((sector + 1) * SECTOR).min(*at as usize + data.len());
                                let part = data[from - *at as usize..to - *at as usize].to_vec();
                                apply_data(&mut bytes, &Data::Write(from as u64, part));
                            }
                        }
                    }
                },
                _ => {
                    if rng.chance(1, 2) {
                        apply_data(&mut bytes, d);
                    }
                }
            }
        }
        bytes
    }

    /// Every file the process sees, with its content: compared with the real directory
    /// after a run, it proves the journal missed no change.
    pub fn live_files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        self.live
            .iter()
            .filter_map(|(p, n)| match n {
                Node::File(i) => Some((p.clone(), self.inodes[*i].live.clone())),
                Node::Dir => None,
            })
            .collect()
    }
}

/// Every file under `root` with its content, by path relative to `root`.
pub fn files_under(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}
