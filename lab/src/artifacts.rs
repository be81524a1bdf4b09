//! `icelab build`: everything a lab run needs, built once and cached
//! outside the repo (XDG cache dir), keyed by recipe content.
//!
//! The recipes are the repo's scripts: `images/build-root.sh` (Debian
//! trixie build root with the cloud kernel and guest tools),
//! `images/build-qemu.sh` (QEMU with icelab's patch), `guest-driver/build.sh`
//! (the driver module, built in the root against the exact kernel) and
//! `guest-tests/build.sh` (the static in-guest runner). Each prints the
//! path of what it built as its last line and returns at once when its
//! cache is warm.

use super::initramfs;
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the build artifacts are.
#[derive(Clone, Debug)]
pub struct Artifacts {
    /// The guest kernel image.
    pub kernel: PathBuf,
    /// Debian package and version of the kernel (or "user-supplied").
    pub kernel_package: String,
    /// Its version string.
    pub kernel_version: String,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// `qemu-system-x86_64 --version`, first line.
    pub qemu_version: String,
    /// True when the QEMU binary carries icelab's patch.
    pub qemu_patched: bool,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// The build root (`images/build-root.sh`'s directory), from which the
    /// userland is made.
    pub build_root: PathBuf,
}

/// The userland's root filesystem image (`images/build-userland.sh`,
/// cached), for `icelab run --guest-cmd` and `icelab shell`.
pub fn userland_image(artifacts: &Artifacts) -> anyhow::Result<PathBuf> {
    let repo = repo_dir()?;
    let dir = run_recipe(
        &repo,
        "images/build-userland.sh",
        &[artifacts.build_root.as_os_str()],
    )?;
    let image = dir.join("root.img");
    if !image.is_file() {
        bail!(
            "images/build-userland.sh made no {}; delete {} to rebuild it",
            image.display(),
            dir.display()
        );
    }
    Ok(image)
}

/// What the user brings instead of the built defaults.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--kernel bzImage`.
    pub kernel: Option<PathBuf>,
    /// `--modules-dir DIR`: holds `icelab_vblk.ko` built for that kernel.
    pub modules_dir: Option<PathBuf>,
    /// `--qemu PATH`.
    pub qemu: Option<PathBuf>,
}

/// The command-line options that choose the guest's kernel, QEMU and
/// accelerator (`icelab run`, `icelab shell`).
#[derive(clap::Args, Debug, Clone)]
pub struct GuestArgs {
    /// Your own kernel image (bzImage); needs --modules-dir.
    #[arg(long, requires = "modules_dir")]
    pub kernel: Option<PathBuf>,
    /// Directory holding icelab_vblk.ko built for --kernel.
    #[arg(long, requires = "kernel")]
    pub modules_dir: Option<PathBuf>,
    /// Your own QEMU binary (must carry icelab's patch for native inline encryption).
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// Accelerator: auto probes KVM and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: crate::qemu::Accel,
}

impl GuestArgs {
    /// What the user brings instead of the built defaults.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            kernel: self.kernel.clone(),
            modules_dir: self.modules_dir.clone(),
            qemu: self.qemu.clone(),
        }
    }
}

/// A file every icelab checkout has, to recognise one.
const REPO_MARKER: &str = "images/build-root.sh";

/// The repository (for the recipe scripts): `$ICELAB_REPO`, else the
/// checkout around the running binary (`target/release/icelab` is inside
/// it), else the one around the current directory. Never a path compiled
/// in: a binary copied elsewhere or built in another tree must not run
/// another checkout's recipes.
pub fn repo_dir() -> anyhow::Result<PathBuf> {
    if let Some(repo) = std::env::var_os("ICELAB_REPO") {
        let repo = PathBuf::from(repo);
        if !repo.join(REPO_MARKER).is_file() {
            bail!(
                "ICELAB_REPO={} is not an icelab checkout (no {REPO_MARKER}); point it at one",
                repo.display()
            );
        }
        return Ok(repo);
    }
    let exe = std::fs::canonicalize(crate::icelab_exe()).ok();
    let cwd = std::env::current_dir().ok();
    find_repo([exe.as_deref(), cwd.as_deref()].into_iter().flatten()).with_context(|| {
        format!(
            "cannot find the icelab checkout (a directory with {REPO_MARKER}) around the \
             icelab binary or the current directory: run icelab from its checkout, or set \
             ICELAB_REPO to it"
        )
    })
}

/// The first ancestor of `starts` (in order) holding [`REPO_MARKER`].
fn find_repo<'a>(starts: impl IntoIterator<Item = &'a Path>) -> Option<PathBuf> {
    starts.into_iter().find_map(|start| {
        start
            .ancestors()
            .find(|dir| dir.join(REPO_MARKER).is_file())
            .map(Path::to_path_buf)
    })
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/icelab`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context(
            "neither XDG_CACHE_HOME nor HOME is set; set one so icelab can cache its builds",
        )?)
        .join(".cache"),
    };
    Ok(base.join("icelab"))
}

/// Builds (or finds) everything; progress goes to stderr.
pub fn build(overrides: &Overrides) -> anyhow::Result<Artifacts> {
    let repo = repo_dir()?;
    if overrides.kernel.is_some() != overrides.modules_dir.is_some() {
        bail!(
            "--kernel and --modules-dir go together: a driver module must be built for the kernel you bring"
        );
    }
    // The root is mostly downloads and dpkg, QEMU mostly compiling: build
    // them side by side.
    let (root, qemu) = std::thread::scope(|scope| {
        let qemu = scope.spawn(|| match &overrides.qemu {
            Some(path) => Ok(path.clone()),
            None => run_recipe(&repo, "images/build-qemu.sh", &[]),
        });
        let root = run_recipe(&repo, "images/build-root.sh", &[]);
        let qemu = qemu
            .join()
            .unwrap_or_else(|_| bail!("the QEMU build thread panicked"));
        (root, qemu)
    });
    let (root, qemu) = (root?, qemu?);
    let kernel_info = read_key_values(&root.join("kernel-version.txt"))?;
    let qemu_version = qemu_version(&qemu)?;
    let qemu_patched = forwards_inline_encryption(&qemu)?;
    let runner = run_recipe(&repo, "guest-tests/build.sh", &[])?;
    let (kernel, kernel_package, kernel_version, module) =
        match (&overrides.kernel, &overrides.modules_dir) {
            (Some(kernel), Some(modules)) => (
                kernel.clone(),
                "user-supplied".to_owned(),
                kernel.display().to_string(),
                modules.join(initramfs::MODULE_FILE),
            ),
            _ => {
                let module_dir =
                    cache_dir()?.join(format!("driver-{:016x}", driver_recipe_hash(&repo, &root)?));
                let cached = module_dir.join(initramfs::MODULE_FILE);
                let module = if cached.is_file() {
                    eprintln!("icelab: driver cached: {}", cached.display());
                    cached
                } else {
                    run_recipe(
                        &repo,
                        "guest-driver/build.sh",
                        &[root.as_os_str(), module_dir.as_os_str()],
                    )?
                };
                (
                    root.join("vmlinuz"),
                    value(&kernel_info, "package")?,
                    value(&kernel_info, "version")?,
                    module,
                )
            }
        };
    for (what, path) in [
        ("kernel", &kernel),
        ("driver module", &module),
        ("QEMU", &qemu),
        ("guest runner", &runner),
    ] {
        if !path.is_file() {
            bail!(
                "the {what} {} does not exist; run `icelab build` again or fix the path",
                path.display()
            );
        }
    }
    let initramfs = initramfs::build(&root.join("rootfs"), &runner, &module, &cache_dir()?)?;
    eprintln!("icelab: initramfs {}", initramfs.display());
    Ok(Artifacts {
        kernel,
        kernel_package,
        kernel_version,
        qemu,
        qemu_version,
        qemu_patched,
        initramfs,
        build_root: root,
    })
}

/// A hash of the driver's sources (every regular file directly in
/// guest-driver/) and the build root they are built against.
fn driver_recipe_hash(repo: &Path, root: &Path) -> anyhow::Result<u64> {
    let dir = repo.join("guest-driver");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let mut key = super::cache_key::CacheKey::default();
    key.path(root);
    for file in files {
        key.field(
            file.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        key.field(
            &std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?,
        );
    }
    Ok(key.finish())
}

/// Runs a recipe script and returns the path it printed last.
fn run_recipe(repo: &Path, script: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<PathBuf> {
    let path = repo.join(script);
    if !path.is_file() {
        bail!(
            "recipe {} is missing; set ICELAB_REPO to the icelab source tree",
            path.display()
        );
    }
    eprintln!("icelab: {script}");
    let output = Command::new("bash")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", path.display()))?;
    if !output.status.success() {
        bail!(
            "{script} failed ({}); its messages are above",
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    if last.is_empty() {
        bail!("{script} printed no path");
    }
    Ok(PathBuf::from(last.trim()))
}

fn read_key_values(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {}; delete its build root to rebuild it",
            path.display()
        )
    })?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

fn value(map: &BTreeMap<String, String>, key: &str) -> anyhow::Result<String> {
    map.get(key).cloned().with_context(|| {
        format!("kernel-version.txt has no `{key}`; delete the build root to rebuild it")
    })
}

/// True when the QEMU binary's vhost-user-blk-pci has icelab's
/// `inline-encryption` property (asked from QEMU itself).
fn forwards_inline_encryption(qemu: &Path) -> anyhow::Result<bool> {
    let output = Command::new(qemu)
        .args([
            "-nodefaults",
            "-machine",
            "none",
            "-device",
            "vhost-user-blk-pci,help",
        ])
        .output()
        .with_context(|| format!("cannot run {}", qemu.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout).contains("inline-encryption"))
}

fn qemu_version(qemu: &Path) -> anyhow::Result<String> {
    let output = Command::new(qemu)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {} --version", qemu.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkout_is_found_above_the_binary_not_compiled_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("clone");
        std::fs::create_dir_all(repo.join("images")).expect("mkdir");
        std::fs::write(repo.join(REPO_MARKER), "").expect("marker");
        let exe = repo.join("target/release/icelab");
        let elsewhere = dir.path().join("elsewhere/bin/icelab");
        assert_eq!(find_repo([exe.as_path()]), Some(repo.clone()));
        assert_eq!(find_repo([elsewhere.as_path(), exe.as_path()]), Some(repo));
        assert_eq!(find_repo([elsewhere.as_path()]), None);
    }
}
