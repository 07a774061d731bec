//! Files rebuilt from an incremental chain: the whole copy of the oldest backup that took
//! the file whole, and the blocks newer backups took of it. Every block is written once,
//! from the newest entry that holds it, so that the entries of a file can be written in any
//! order and in parallel; the file is then cut or extended to its newest size.

use std::collections::HashMap;

use crate::catalog::backup::{BackupFile, Delta};
use crate::pg::block_map::runs_contain;

/// The layered files of a manifest, by path.
#[derive(Debug, Default)]
pub struct Layers {
    block_size: u64,
    files: HashMap<String, Layered>,
}

#[derive(Debug, Default)]
pub struct Layered {
    /// The deltas' runs, deepest (newest) first.
    deltas: Vec<(u32, Vec<[u32; 2]>)>,
    /// The newest delta's file size.
    size: u64,
}

impl Layers {
    /// The layered files among `files` (the entries of one manifest).
    pub fn new(files: &[BackupFile], block_size: Option<u32>) -> Self {
        let mut layers = Layers {
            block_size: u64::from(block_size.unwrap_or(8192)),
            files: HashMap::new(),
        };
        for file in files {
            let Some(delta) = &file.delta else { continue };
            let layered = layers.files.entry(file.path.clone()).or_default();
            layered.deltas.push((delta.depth, delta.runs.clone()));
        }
        for (path, layered) in &mut layers.files {
            layered.deltas.sort_by_key(|d| std::cmp::Reverse(d.0));
            let newest = layered.deltas[0].0;
            layered.size = files
                .iter()
                .filter(|f| &f.path == path)
                .filter_map(|f| f.delta.as_ref())
                .find(|d| d.depth == newest)
                .map_or(0, |d| d.file_size);
        }
        layers
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The size a layered file ends with; None for a file restored from whole entries only.
    pub fn final_size(&self, path: &str) -> Option<u64> {
        self.files.get(path).map(|l| l.size)
    }

    /// The layered paths and their final sizes.
    pub fn final_sizes(&self) -> impl Iterator<Item = (&str, u64)> {
        self.files.iter().map(|(path, l)| (path.as_str(), l.size))
    }

    /// The layers of the file at `path`, if it is rebuilt from a chain.
    pub fn file(&self, path: &str) -> Option<&Layered> {
        self.files.get(path)
    }
}

impl Layered {
    /// Whether `block` of the file is written from an entry of depth `depth` (0: a whole
    /// entry): it is inside the final size and no deeper delta holds it.
    pub fn writes(&self, depth: u32, block: u64, block_size: u64) -> bool {
        if block >= self.size.div_ceil(block_size) {
            return false;
        }
        let Ok(block) = u32::try_from(block) else {
            return false;
        };
        // The deepest delta that holds the block wins.
        match self
            .deltas
            .iter()
            .find(|(_, runs)| runs_contain(runs, block))
        {
            Some((deepest, _)) => *deepest == depth,
            None => depth == 0,
        }
    }
}

/// Where the `index`-th block an entry's bytes hold goes in the file: for a delta, the
/// `index`-th block of its runs; for a whole entry, the block at its offset.
pub fn block_of(entry: &BackupFile, delta_blocks: &[u32], index: u64, block_size: u64) -> u64 {
    match &entry.delta {
        Some(_) => delta_blocks
            .get(index as usize)
            .map_or(u64::MAX, |&b| u64::from(b)),
        None => entry.file_offset / block_size + index,
    }
}

/// The blocks of a delta, in the order its bytes hold them.
pub fn delta_blocks(delta: Option<&Delta>) -> Vec<u32> {
    delta.map(|d| d.blocks().collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, delta: Option<(u32, Vec<[u32; 2]>, u64)>) -> BackupFile {
        BackupFile {
            path: path.into(),
            size: 0,
            file_offset: 0,
            mode: 0o600,
            mtime: 0,
            crc32c: 0,
            object: 0,
            offset: 0,
            backup: None,
            delta: delta.map(|(depth, runs, file_size)| Delta {
                runs,
                file_size,
                depth,
            }),
        }
    }

    #[test]
    fn each_block_comes_from_the_newest_entry_that_holds_it() {
        let files = [
            entry("base/5/100", None),
            entry("base/5/100", Some((1, vec![[1, 2]], 8 * 8192))),
            entry("base/5/100", Some((3, vec![[2, 1], [6, 1]], 7 * 8192))),
            entry("base/5/101", None),
        ];
        let layers = Layers::new(&files, Some(8192));
        assert_eq!(layers.final_size("base/5/100"), Some(7 * 8192));
        assert_eq!(layers.final_size("base/5/101"), None);
        let layered = layers.file("base/5/100").unwrap();
        let from = |block| (0..4).find(|&d| layered.writes(d, block, 8192));
        assert_eq!(
            (0..8).map(from).collect::<Vec<_>>(),
            [
                Some(0),
                Some(1),
                Some(3),
                Some(0),
                Some(0),
                Some(0),
                Some(3),
                // Past the newest size: cut, written by none.
                None
            ]
        );
        assert!(layers.file("base/5/101").is_none());
    }
}
