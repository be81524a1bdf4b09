//! The data path through the image's shared mapping (issue 13), on a real
//! `icelab serve`: the image shrinks under the running device, the
//! requests that touch the lost range get IOERR (a SIGBUS in the mapping
//! must not kill the device), and everything else is still served.

mod ice;
mod support;

use ice::{Session, msg, oracle_encrypt, random_bytes, random_key};
use icelab_emulator::protocol::{KeyDesc, Status};
use icelab_frontend::Frontend;
use icelab_frontend::FrontendOptions;
use icelab_frontend::blk::Request;
use std::os::unix::fs::MetadataExt;
use support::{Device, read_at, stat_u64, temp_dir};

const MIB: u64 = 1 << 20;

fn dun(sector: u64) -> u128 {
    u128::from(sector)
}

#[test]
fn a_truncated_image_gives_ioerr_for_the_lost_range_and_the_device_serves_on() {
    let mut session = Session::start(16 * MIB, &["--preallocate"]);
    let key = random_key();
    let control = session.control();
    session.expect(
        control,
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(1, &key, 4096, 8)),
        Status::Ok,
    );
    let plain = random_bytes(128 * 1024);
    let (kept, lost) = (64, 12 * MIB / 512);
    // Twice: a first write to a page goes through pwrite, the second
    // through the mapping (the page is in the page cache then).
    for sector in [kept, kept, lost, lost] {
        let write = Request::crypto_write(sector, &msg(1, dun(sector)), plain.clone());
        session.expect(0, &write, Status::Ok);
    }
    assert_eq!(
        read_at(&session.image, kept * 512, plain.len()),
        oracle_encrypt(&key, &plain, 4096, u128::from(kept)),
        "CRYPTO_OUT through the mapping puts the oracle's ciphertext on the image"
    );

    let image = std::fs::OpenOptions::new()
        .write(true)
        .open(&session.image)
        .expect("open the image");
    image.set_len(8 * MIB).expect("truncate the image");
    let len = plain.len() as u32;
    session.expect(
        0,
        &Request::crypto_read(lost, &msg(1, dun(lost)), len),
        Status::IoErr,
    );
    session.expect(0, &Request::read(lost, len), Status::IoErr);

    let back = session.expect(
        0,
        &Request::crypto_read(kept, &msg(1, dun(kept)), len),
        Status::Ok,
    );
    assert_eq!(back.data, plain, "the range the file still has is served");
    let other = random_bytes(64 * 1024);
    session.expect(
        0,
        &Request::crypto_write(kept + 512, &msg(1, 7), other.clone()),
        Status::Ok,
    );
    session.expect(0, &Request::flush(), Status::Ok);
    let again = session.expect(
        0,
        &Request::crypto_read(kept + 512, &msg(1, 7), 64 * 1024),
        Status::Ok,
    );
    assert_eq!(again.data, other);

    let logs = session.device.logs();
    assert!(
        logs.contains("SIGBUS"),
        "the refusal names the problem\n{logs}"
    );
    let stats = session.finish();
    assert_eq!(stat_u64(&stats, "stats.rejected.total"), 2);
}

/// `--size` creates the image with its blocks allocated, so that
/// CRYPTO_OUT writes through the mapping; `--sparse` keeps it sparse.
#[test]
fn a_new_image_is_preallocated_unless_sparse() {
    for (extra, allocated) in [(None, true), (Some("--sparse"), false)] {
        let dir = temp_dir("prealloc");
        let image = dir.path().join("disk.img");
        let socket = dir.path().join("s.sock");
        let mut builder = Device::builder(&image, &socket).args(["--size", "8M"]);
        if let Some(extra) = extra {
            builder = builder.arg(extra);
        }
        let mut device = builder.spawn();
        let frontend = Frontend::connect(&socket, &FrontendOptions::default())
            .unwrap_or_else(|error| panic!("connect: {error}\n{}", device.logs()));
        let metadata = std::fs::metadata(&image).expect("image");
        assert_eq!(metadata.len(), 8 * MIB);
        assert_eq!(
            metadata.blocks() * 512 >= 8 * MIB,
            allocated,
            "{extra:?}: {} blocks",
            metadata.blocks()
        );
        drop(frontend);
        device.assert_clean_exit("after the frontend disconnected");
    }
}
