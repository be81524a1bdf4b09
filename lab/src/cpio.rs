//! A writer for the cpio "newc" format, the format the kernel unpacks as
//! an initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Device nodes are plain archive entries, so an unprivileged writer can
//! still give the initramfs a `/dev/console` for init's standard streams.

use std::collections::BTreeSet;
use std::io::{self, Write};

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// One archive member.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDevice { major: u32, minor: u32 },
}

/// An initramfs under construction: paths are absolute inside the archive;
/// parent directories are added automatically.
#[derive(Debug, Default)]
pub struct Archive {
    entries: Vec<(String, Entry)>,
    paths: BTreeSet<String>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str) {
        let path = normalize(path);
        if path.is_empty() || self.paths.contains(&path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.push(path, Entry::Dir);
    }

    /// Adds a regular file with `mode` permission bits (e.g. 0o755).
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.push_with_parents(
            path,
            Entry::File {
                mode: mode & 0o7777,
                data,
            },
        );
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.push_with_parents(
            path,
            Entry::Symlink {
                target: target.to_owned(),
            },
        );
    }

    /// Adds a character device node.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.push_with_parents(path, Entry::CharDevice { major, minor });
    }

    /// True when `path` is already in the archive.
    pub fn contains(&self, path: &str) -> bool {
        self.paths.contains(&normalize(path))
    }

    fn push_with_parents(&mut self, path: &str, entry: Entry) {
        let path = normalize(path);
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.push(path, entry);
    }

    fn push(&mut self, path: String, entry: Entry) {
        if self.paths.insert(path.clone()) {
            self.entries.push((path, entry));
        }
    }

    /// Writes the archive, trailer included.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut offset = 0u64;
        for (inode, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (S_IFDIR | 0o755, &[], (0, 0)),
                Entry::File { mode, data } => (S_IFREG | mode, data, (0, 0)),
                Entry::Symlink { target } => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
                Entry::CharDevice { major, minor } => (S_IFCHR | 0o600, &[], (*major, *minor)),
            };
            let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
            offset += write_member(out, inode as u32 + 1, mode, nlink, rdev, path, data)?;
        }
        offset += write_member(out, 0, 0, 1, (0, 0), "TRAILER!!!", &[])?;
        // Pad the whole archive to a 512-byte boundary, as cpio does.
        let padding = (512 - offset % 512) % 512;
        out.write_all(&vec![0; padding as usize])
    }
}

/// Paths inside the archive have no leading slash.
fn normalize(path: &str) -> String {
    path.trim_matches('/').to_owned()
}

fn write_member(
    out: &mut impl Write,
    inode: u32,
    mode: u32,
    nlink: u32,
    (rdev_major, rdev_minor): (u32, u32),
    name: &str,
    data: &[u8],
) -> io::Result<u64> {
    let name_size = name.len() + 1;
    let header = format!(
        "070701{inode:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {major:08x}{minor:08x}{rdev_major:08x}{rdev_minor:08x}{name_size:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        size = data.len(),
        major = 0,
        minor = 0,
        check = 0,
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let head = header.len() + name_size;
    let head_pad = (4 - head % 4) % 4;
    out.write_all(&[0; 3][..head_pad])?;
    out.write_all(data)?;
    let data_pad = (4 - data.len() % 4) % 4;
    out.write_all(&[0; 3][..data_pad])?;
    Ok((head + head_pad + data.len() + data_pad) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_aligned_and_parents_come_first() {
        let mut archive = Archive::new();
        archive.file("/bin/busybox", 0o755, b"abcde".to_vec());
        archive.symlink("/bin/sh", "busybox");
        archive.char_device("/dev/console", 5, 1);
        let mut bytes = Vec::new();
        archive.write_to(&mut bytes).unwrap();
        assert_eq!(bytes.len() % 512, 0);
        let text = String::from_utf8_lossy(&bytes);
        let order: Vec<usize> = [
            "bin\0",
            "bin/busybox\0",
            "bin/sh\0",
            "dev\0",
            "dev/console\0",
            "TRAILER!!!\0",
        ]
        .iter()
        .map(|name| text.find(name).unwrap_or_else(|| panic!("{name} missing")))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        // Every header starts on a 4-byte boundary with the newc magic.
        let mut at = 0;
        let mut members = 0;
        while at < bytes.len() && &bytes[at..at + 6] == b"070701" {
            let field = |i: usize| {
                usize::from_str_radix(
                    std::str::from_utf8(&bytes[at + 6 + i * 8..at + 14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (size, name_size) = (field(6), field(11));
            let head = 110 + name_size;
            at += head.next_multiple_of(4) + size.next_multiple_of(4);
            members += 1;
        }
        assert_eq!(members, 6);
        // The device node carries its numbers.
        let console = text.find("dev/console").unwrap() - 110;
        assert_eq!(
            &text[console + 6 + 9 * 8..console + 6 + 11 * 8],
            "0000000500000001"
        );
    }

    #[test]
    fn duplicates_are_ignored() {
        let mut archive = Archive::new();
        archive.file("/init", 0o755, vec![1]);
        archive.file("/init", 0o755, vec![2]);
        assert!(archive.contains("init"));
        assert_eq!(archive.entries.len(), 1);
    }
}
