//! Steps that suites share, one subject per module; everything is
//! re-exported here, so callers write `steps::load_driver`,
//! `steps::mount_configured`, ...:
//!
//! - `driver`: loading the driver module (modprobe of its dependencies,
//!   finit_module(2));
//! - `disk`: waiting for the disk's block device, its size;
//! - `crypto_sysfs`: reading and checking /sys/block/NAME/queue/crypto/;
//! - `ext4`: mkfs, mount and its options, the filesystem UUID;
//! - `cache`: sync and drop the caches, so reads come from the disk;
//! - `kernel_log`: fscrypt's "using blk-crypto" lines in the kernel log.
//!
//! Pure parts (parsers, matchers) are separate functions with unit tests;
//! the parts that touch the system record what they see in the test's
//! facts.

mod cache;
mod crypto_sysfs;
mod disk;
mod driver;
mod ext4;
mod kernel_log;

pub use cache::sync_and_drop_caches;
pub use crypto_sysfs::{
    AES_256_XTS, CryptoExpect, CryptoSysfs, SysfsError, check_crypto_sysfs, crypto_facts,
    parse_mask, read_crypto_sysfs,
};
pub use disk::{disk_size, wait_for_block_device};
pub use driver::{is_compressed_module, load_driver, modprobe, modprobe_usable, module_depends};
pub use ext4::{
    ext4_uuid, has_option, mkfs_ext4, mkfs_ext4_features, mount_configured, mount_ext4,
    mount_options, read_ext4_uuid,
};
pub use kernel_log::{ImplLines, crypto_log_lines, find_impl_lines, impl_message};
