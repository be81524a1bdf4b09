//! Loading the driver module: best-effort `modprobe` of the preloads and
//! of the module's own `depends=`, then finit_module(2) of the module.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::command;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, fail};
use crate::sys::{self, Errno};

/// How long one modprobe may take (TCG guests are slow).
const MODPROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// modprobe, if the initramfs has one and a module tree for the running
/// kernel to go with it.
pub fn modprobe_usable(release: &str) -> Option<PathBuf> {
    let tree = Path::new("/lib/modules").join(release);
    let modprobe = command::which("modprobe")?;
    tree.join("modules.dep").is_file().then_some(modprobe)
}

/// Loads `name` with `modprobe -q` (dependencies included).
pub fn modprobe(name: &str, scale: u32) -> command::Result<()> {
    command::run(
        "modprobe",
        &["-q", name],
        MODPROBE_TIMEOUT.saturating_mul(scale),
    )
    .map(|_| ())
}

/// The `depends=` list of a module file's .modinfo section (empty for a
/// compressed file or a module without dependencies).
pub fn module_depends(image: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = image.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &image[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether a module file is compressed (the kernel decompresses it with
/// `MODULE_INIT_COMPRESSED_FILE`).
pub fn is_compressed_module(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("xz" | "zst" | "gz")
    )
}

/// The driver-load step: best-effort modprobe of `icelab.preload` and of
/// the module's own dependencies, then finit_module(2) of the module.
/// Records `module`, `preload`, `depends`, `already_loaded`, and on failure
/// `errno`/`errno_name`.
pub fn load_driver(ctx: &Ctx, facts: &mut Facts) -> Result<String, Failure> {
    let config = &ctx.config;
    let path = &config.module;
    facts.set("module", path.display().to_string());
    ctx.step(format!("reading {}", path.display()));
    let image = match fs::read(path) {
        Ok(image) => image,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(0);
            record_errno(facts, errno);
            return fail(format!(
                "cannot read the driver module {}: {}",
                path.display(),
                Errno(errno)
            ));
        }
    };
    let depends = if is_compressed_module(path) {
        Vec::new()
    } else {
        module_depends(&image)
    };
    facts.set("depends", depends.clone());

    let mut preload = serde_json::Map::new();
    match modprobe_usable(&ctx.uname.release) {
        Some(_) => {
            for name in config.preload.iter().chain(&depends) {
                ctx.step(format!("modprobe {name}"));
                let outcome = match modprobe(name, config.timeout_factor) {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => e.to_string(),
                };
                preload.insert(name.clone(), Value::String(outcome));
            }
        }
        None => {
            facts.set(
                "preload_skipped",
                format!(
                    "no modprobe in PATH or no /lib/modules/{}/modules.dep",
                    ctx.uname.release
                ),
            );
        }
    }
    facts.set("preload", Value::Object(preload));

    ctx.step(format!("finit_module {}", path.display()));
    let file = File::open(path).map_err(|e| {
        let errno = e.raw_os_error().unwrap_or(0);
        record_errno(facts, errno);
        Failure(format!(
            "cannot open the driver module {}: {}",
            path.display(),
            Errno(errno)
        ))
    })?;
    let flags = if is_compressed_module(path) {
        sys::MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    match sys::finit_module(&file, &path.display().to_string(), flags) {
        Ok(()) => {
            facts.set("already_loaded", false);
            Ok(format!("loaded {}", path.display()))
        }
        Err(e) if e.errno == libc::EEXIST => {
            facts.set("already_loaded", true);
            Ok(format!("{} was already loaded", path.display()))
        }
        Err(e) => {
            record_errno(facts, e.errno);
            let hint = match e.errno {
                libc::ENOENT => format!(
                    " (unknown symbols: are its dependencies {depends:?} loaded? see the kernel log)"
                ),
                libc::ENOEXEC => " (built for another kernel or architecture?)".to_owned(),
                _ => String::new(),
            };
            fail(format!("{e}{hint}"))
        }
    }
}

fn record_errno(facts: &mut Facts, errno: i32) {
    facts
        .set("errno", errno)
        .set("errno_name", Errno(errno).name());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_depends_reads_modinfo() {
        let mut image =
            b"\x7fELF....license=GPL\0depends=virtio,virtio_ring\0retpoline=Y\0".to_vec();
        assert_eq!(module_depends(&image), vec!["virtio", "virtio_ring"]);
        image = b"\0name=x\0depends=\0".to_vec();
        assert!(module_depends(&image).is_empty());
        assert!(module_depends(b"no modinfo here").is_empty());
        assert!(is_compressed_module(Path::new("/lib/modules/x.ko.xz")));
        assert!(!is_compressed_module(Path::new(
            "/lib/modules/icelab_vblk.ko"
        )));
    }
}
