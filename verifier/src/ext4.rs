//! Reading an ext4 image with e2fsprogs on the host.
//!
//! Standards: the ext4 on-disk format (kernel
//! `Documentation/filesystems/ext4/`), the fscrypt v2 context stored in
//! the inode's extended attribute index 9 (`EXT4_XATTR_INDEX_ENCRYPTION`)
//! named "c" (`struct fscrypt_context_v2` in `fs/crypto/fscrypt_private.h`).
//! The text formats parsed are those of e2fsprogs 1.47 `debugfs` and
//! `dumpe2fs`: `dump_extents -l`, `stat`, `ea_get -x`, `dumpe2fs -h`.
//! debugfs does not know a name prefix for index 9, so it shows the
//! context as a bare "c".

use std::path::Path;
use std::process::Command;

use crate::Error;
use crate::hex::from_hex;
use crate::kdf::{FILE_NONCE_SIZE, KEY_IDENTIFIER_SIZE};

/// What the superblock tells the verifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// `s_uuid`, which fscrypt mixes into per-mode keys (`sb->s_uuid`).
    pub uuid: [u8; 16],
    /// Filesystem block size in bytes.
    pub block_size: u32,
}

/// One leaf extent: `len` blocks at logical `logical` stored at `physical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
    /// Preallocated, never written: reads as zeros, holds no ciphertext.
    pub unwritten: bool,
}

/// `struct fscrypt_context_v2` (40 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FscryptContextV2 {
    pub contents_mode: u8,
    pub filenames_mode: u8,
    pub flags: u8,
    /// 0 means "the filesystem block size".
    pub log2_data_unit_size: u8,
    pub master_key_identifier: [u8; KEY_IDENTIFIER_SIZE],
    pub nonce: [u8; FILE_NONCE_SIZE],
}

/// `FSCRYPT_CONTEXT_V2`.
pub const FSCRYPT_CONTEXT_V2: u8 = 2;

impl FscryptContextV2 {
    /// Parse the xattr value: version, contents mode, filenames mode,
    /// flags, log2_data_unit_size, 3 reserved bytes, 16-byte master key
    /// identifier, 16-byte nonce.
    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        if raw.len() != 40 {
            return Err(format!("fscrypt context is {} bytes, not 40", raw.len()));
        }
        if raw[0] != FSCRYPT_CONTEXT_V2 {
            return Err(format!("fscrypt context version {} is not 2", raw[0]));
        }
        Ok(Self {
            contents_mode: raw[1],
            filenames_mode: raw[2],
            flags: raw[3],
            log2_data_unit_size: raw[4],
            master_key_identifier: raw[8..24].try_into().expect("16 bytes"),
            nonce: raw[24..40].try_into().expect("16 bytes"),
        })
    }
}

/// Parse `dumpe2fs -h` (or debugfs `stats`) output.
pub fn parse_superblock(text: &str) -> Result<Superblock, String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
            .ok_or_else(|| format!("no {name:?} in superblock dump"))
    };
    let uuid_text = field("Filesystem UUID:")?.replace('-', "");
    let uuid = from_hex(&uuid_text)
        .and_then(|v| <[u8; 16]>::try_from(v).ok())
        .ok_or_else(|| format!("bad filesystem UUID {uuid_text:?}"))?;
    let bs = field("Block size:")?;
    let block_size = bs
        .parse::<u32>()
        .ok()
        .filter(|b| b.is_power_of_two() && *b >= 1024)
        .ok_or_else(|| format!("bad block size {bs:?}"))?;
    Ok(Superblock { uuid, block_size })
}

/// Parse `debugfs -R "dump_extents -l <ino>"`: leaf lines look like
/// ` 0/ 0   1/  2     0 -     1  1165 -  1166      2 [Uninit]`; e2fsprogs
/// versions differ in whether a one-block range prints as `a - a` or `a`.
pub fn parse_extents(text: &str) -> Result<Vec<Extent>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with("Level") {
            continue;
        }
        // Skip "L/ D   E/ N": everything up to the second '/', then N.
        let err = || format!("unparsable extent line {line:?}");
        let second_slash = t.match_indices('/').nth(1).ok_or_else(err)?.0;
        let toks: Vec<&str> = t[second_slash + 1..].split_whitespace().skip(1).collect();
        let mut pos = 0;
        let mut range = || -> Result<(u64, u64), String> {
            let num = |s: Option<&&str>| s.and_then(|s| s.parse::<u64>().ok()).ok_or_else(err);
            let a = num(toks.get(pos))?;
            pos += 1;
            if toks.get(pos) == Some(&"-") {
                let b = num(toks.get(pos + 1))?;
                pos += 2;
                Ok((a, b))
            } else {
                Ok((a, a))
            }
        };
        let (l0, l1) = range()?;
        let (p0, p1) = range()?;
        let len = toks
            .get(pos)
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(err)?;
        if len == 0
            || l1.checked_sub(l0).map(|d| d + 1) != Some(len)
            || p1.checked_sub(p0).map(|d| d + 1) != Some(len)
        {
            return Err(err());
        }
        let unwritten = toks[pos + 1..]
            .iter()
            .any(|f| f.eq_ignore_ascii_case("uninit"));
        out.push(Extent {
            logical: l0,
            physical: p0,
            len,
            unwritten,
        });
    }
    out.sort_by_key(|e| e.logical);
    Ok(out)
}

/// Parse `debugfs -R "stat <ino>"` for the file size (`i_size`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("User:"))
        .find_map(|l| {
            let (_, rest) = l.split_once("Size:")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .ok_or_else(|| "no size in inode dump".to_string())
}

/// Parse `debugfs -R "stat <ino>"` for the file type ("regular", "directory",
/// "bad type" for a free inode, ...).
pub fn parse_type(text: &str) -> Option<&str> {
    let (_, rest) = text.split_once("Type:")?;
    let end = rest.find("Mode:").unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// Parse `debugfs -R "ea_get -x <ino> c"`: `c (40) = 02 01 ...`.
pub fn parse_ea_hex(text: &str) -> Result<Vec<u8>, String> {
    let (_, hex) = text
        .split_once('=')
        .ok_or_else(|| format!("no xattr value in {text:?}"))?;
    let joined: String = hex.split_whitespace().collect();
    from_hex(&joined).ok_or_else(|| format!("bad xattr hex in {text:?}"))
}

/// What the verifier reads about one inode.
#[derive(Clone, Debug)]
pub struct InodeInfo {
    pub size: u64,
    pub extents: Vec<Extent>,
    pub context: FscryptContextV2,
}

/// Where an unencrypted regular file's data lives.
#[derive(Clone, Debug)]
pub struct InodeLayout {
    pub size: u64,
    pub extents: Vec<Extent>,
}

/// Runs `debugfs` / `dumpe2fs` read-only against an image.
pub struct Debugfs<'a> {
    image: &'a Path,
}

impl<'a> Debugfs<'a> {
    pub fn new(image: &'a Path) -> Self {
        Self { image }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, Error> {
        let out = Command::new(program)
            .args(args)
            .arg(self.image)
            .output()
            .map_err(|source| Error::Tool {
                tool: program.to_string(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(Error::ToolFailed {
                tool: format!("{program} {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        // debugfs exits 0 even when a request fails; an empty stdout with
        // something beyond the version banner on stderr is a failure.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let complaint: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("debugfs ") && !l.starts_with("dumpe2fs ") && !l.is_empty())
            .collect();
        if stdout.trim().is_empty() && !complaint.is_empty() {
            return Err(Error::ToolFailed {
                tool: format!("{program} {}", args.join(" ")),
                stderr: complaint.join("\n"),
            });
        }
        Ok(stdout)
    }

    fn debugfs(&self, request: &str) -> Result<String, Error> {
        self.run("debugfs", &["-R", request])
    }

    pub fn superblock(&self) -> Result<Superblock, Error> {
        let text = self.run("dumpe2fs", &["-h"])?;
        parse_superblock(&text).map_err(Error::Parse)
    }

    /// Size and leaf extents of a regular file (no fscrypt context needed).
    pub fn layout(&self, ino: u64) -> Result<InodeLayout, Error> {
        let parse = |what: &str, e: String| Error::Parse(format!("inode {ino} {what}: {e}"));
        let stat = self.debugfs(&format!("stat <{ino}>"))?;
        match parse_type(&stat) {
            Some("regular") => {}
            t => {
                return Err(parse(
                    "stat",
                    format!("not a regular file (type {})", t.unwrap_or("unknown")),
                ));
            }
        }
        let size = parse_size(&stat).map_err(|e| parse("stat", e))?;
        let extents = self.debugfs(&format!("dump_extents -l <{ino}>"))?;
        let extents = parse_extents(&extents).map_err(|e| parse("extents", e))?;
        Ok(InodeLayout { size, extents })
    }

    pub fn inode(&self, ino: u64) -> Result<InodeInfo, Error> {
        let parse = |what: &str, e: String| Error::Parse(format!("inode {ino} {what}: {e}"));
        let InodeLayout { size, extents } = self.layout(ino)?;
        let ea = self.debugfs(&format!("ea_get -x <{ino}> c"))?;
        let raw = parse_ea_hex(&ea).map_err(|e| parse("fscrypt context", e))?;
        let context = FscryptContextV2::parse(&raw).map_err(|e| parse("fscrypt context", e))?;
        Ok(InodeInfo {
            size,
            extents,
            context,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from e2fsprogs 1.47.0 on an 8 MiB `mkfs.ext4 -O encrypt` image.
    const DUMPE2FS: &str = "Filesystem volume name:   <none>\n\
Last mounted on:          <not available>\n\
Filesystem UUID:          5e9e0e69-8096-44d2-b149-79c608aea629\n\
Filesystem magic number:  0xEF53\n\
Block size:               4096\n\
Fragment size:            4096\n";
    const EXTENTS: &str = "Level Entries       Logical      Physical Length Flags\n \
0/ 0   1/  2     0 -     1  1165 -  1166      2 \n \
0/ 0   2/  2     5 -     9  1170 -  1174      5 Uninit\n";
    const EXTENTS_OLD_STYLE: &str = " 0/ 0   1/  1     0        1162             1 \n \
1/ 1   1/  1     3 -     4 100000 - 100001    2 \n";
    const STAT: &str = "Inode: 12   Type: regular    Mode:  0644   Flags: 0x80800\n\
Generation: 0    Version: 0x00000000:00000000\n\
User:     0   Group:     0   Project:     0   Size: 11000\n\
File ACL: 0\n\
Fragment:  Address: 0    Number: 0    Size: 0\n\
Size of extra inode fields: 32\n";
    const EA: &str = "c (40) = 02 01 04 08 00 00 00 00 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 64 65 66 67 68 69 6a 6b 6c 6d 6e 6f 70 71 72 73 \n";

    #[test]
    fn superblock() {
        let sb = parse_superblock(DUMPE2FS).unwrap();
        assert_eq!(sb.block_size, 4096);
        assert_eq!(sb.uuid[..3], [0x5e, 0x9e, 0x0e]);
        assert!(parse_superblock("Block size: 4096\n").is_err());
    }

    #[test]
    fn extents() {
        let e = parse_extents(EXTENTS).unwrap();
        assert_eq!(
            e,
            vec![
                Extent {
                    logical: 0,
                    physical: 1165,
                    len: 2,
                    unwritten: false
                },
                Extent {
                    logical: 5,
                    physical: 1170,
                    len: 5,
                    unwritten: true
                },
            ]
        );
        let e = parse_extents(EXTENTS_OLD_STYLE).unwrap();
        assert_eq!(
            e[0],
            Extent {
                logical: 0,
                physical: 1162,
                len: 1,
                unwritten: false
            }
        );
        assert_eq!(
            e[1],
            Extent {
                logical: 3,
                physical: 100000,
                len: 2,
                unwritten: false
            }
        );
        assert!(parse_extents(" 0/ 0 1/ 1 0 - 3 10 - 11 4\n").is_err());
        assert!(parse_extents("garbage\n").is_err());
    }

    #[test]
    fn size_and_context() {
        assert_eq!(parse_size(STAT).unwrap(), 11000);
        assert_eq!(parse_type(STAT), Some("regular"));
        assert_eq!(
            parse_type("Inode: 99   Type: bad type    Mode:  0000   Flags: 0x0\n"),
            Some("bad type")
        );
        let ctx = FscryptContextV2::parse(&parse_ea_hex(EA).unwrap()).unwrap();
        assert_eq!(ctx.contents_mode, 1);
        assert_eq!(ctx.filenames_mode, 4);
        assert_eq!(ctx.flags, 8);
        assert_eq!(ctx.log2_data_unit_size, 0);
        assert_eq!(ctx.master_key_identifier[15], 15);
        assert_eq!(ctx.nonce[0], 100);
        assert!(FscryptContextV2::parse(&[1; 40]).is_err());
        assert!(FscryptContextV2::parse(&[2; 39]).is_err());
    }
}
