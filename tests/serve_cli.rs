//! `icelab serve` as a process: argument errors, signals, `--persist`,
//! and serving a frontend that does not negotiate EVENT_IDX.

mod ice;
mod support;

use ice::{REQUEST_TIMEOUT, Session, msg, random_bytes, random_key};
use icelab_emulator::protocol::{KeyDesc, Status, VIRTIO_RING_F_EVENT_IDX, feature};
use icelab_frontend::blk::{BlkQueue, Request};
use icelab_frontend::{Frontend, FrontendOptions};
use std::process::Command;
use std::time::Duration;
use support::{Device, create_image, icelab_bin, read_stats, stat_u64, temp_dir, wait_until};

fn serve(args: &[&str]) -> std::process::Output {
    Command::new(icelab_bin())
        .arg("serve")
        .args(args)
        .output()
        .expect("run icelab serve")
}

#[test]
fn bad_arguments_are_refused_before_anything_starts() {
    let dir = temp_dir("cli");
    let image = dir.path().join("disk.img");
    let socket = dir.path().join("s.sock");
    let (image, socket) = (image.to_str().unwrap(), socket.to_str().unwrap());
    let cases: [(&[&str], &str); 4] = [
        (&["--image", image, "--socket", socket], "pass --size"),
        (
            &[
                "--image",
                image,
                "--socket",
                socket,
                "--size",
                "1G",
                "--profile",
                "nvme",
            ],
            "unknown --profile",
        ),
        (
            &[
                "--image", image, "--socket", socket, "--size", "1G", "--slots", "0",
            ],
            "at least one keyslot",
        ),
        (
            &[
                "--image", image, "--socket", socket, "--size", "1G", "--queues", "65",
            ],
            "--queues 65",
        ),
    ];
    for (args, expected) in cases {
        let output = serve(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !dir.path().join("s.sock").exists(),
            "{args:?}: no socket may be created"
        );
    }
    assert!(
        !dir.path().join("disk.img").exists(),
        "no image is created for refused arguments"
    );
}

#[test]
fn sigusr1_writes_stats_and_sigterm_exits_cleanly() {
    let mut session = Session::start(4 << 20, &[]);
    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &random_key(), 4096, 8)),
        Status::Ok,
    );
    session.expect(
        0,
        &Request::crypto_write(0, &msg(0, 0), random_bytes(8192)),
        Status::Ok,
    );
    assert!(
        !session.stats.exists(),
        "stats are written on request, not continuously"
    );
    let pid = session.device.process().id() as i32;
    // SAFETY: kill(2) with a valid signal number on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    assert!(
        wait_until(Duration::from_secs(10), || session.stats.exists()),
        "SIGUSR1 wrote no stats"
    );
    let stats = read_stats(&session.stats);
    assert_eq!(stat_u64(&stats, "stats.crypto_out.requests"), 1);
    assert_eq!(stat_u64(&stats, "stats.keyslots.programmed"), 1);

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    session.device.assert_clean_exit("after SIGTERM");
    assert!(
        !session.dir.path().join("icelab.sock").exists(),
        "the socket is removed at exit"
    );
}

/// The control queue of `frontend`, where key management goes.
fn control_queue(frontend: &mut Frontend) -> BlkQueue {
    BlkQueue::new(frontend.take_control_queue().expect("a control queue")).expect("queue driver")
}

#[test]
fn persist_serves_a_second_connection_with_empty_keyslots() {
    let dir = temp_dir("persist");
    let image = dir.path().join("disk.img");
    let socket = dir.path().join("icelab.sock");
    create_image(&image, 4 << 20);
    let mut device = Device::builder(&image, &socket).arg("--persist").spawn();
    let plain = random_bytes(4096);
    let key = random_key();
    {
        let mut frontend =
            Frontend::connect(&socket, &FrontendOptions::default()).expect("first connection");
        let mut queue = frontend.take_blk_queues().expect("queues").remove(0);
        let mut control = control_queue(&mut frontend);
        let programmed = control
            .submit_and_wait(
                &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(2, &key, 4096, 8)),
                REQUEST_TIMEOUT,
            )
            .unwrap();
        assert_eq!(programmed.status(), Some(Status::Ok));
        let written = queue
            .submit_and_wait(
                &Request::crypto_write(0, &msg(2, 9), plain.clone()),
                REQUEST_TIMEOUT,
            )
            .unwrap();
        assert_eq!(written.status(), Some(Status::Ok));
    }
    // The device outlives the first frontend and resets its keyslots.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        device.process().try_wait().is_none(),
        "--persist must keep serving\n{}",
        device.logs()
    );
    let mut frontend =
        Frontend::connect(&socket, &FrontendOptions::default()).expect("second connection");
    let mut queue = frontend.take_blk_queues().expect("queues").remove(0);
    let mut control = control_queue(&mut frontend);
    let empty = queue
        .submit_and_wait(&Request::crypto_read(0, &msg(2, 9), 4096), REQUEST_TIMEOUT)
        .unwrap();
    assert_eq!(
        empty.status(),
        Some(Status::IoErr),
        "a new connection starts with empty keyslots"
    );
    control
        .submit_and_wait(
            &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(2, &key, 4096, 8)),
            REQUEST_TIMEOUT,
        )
        .unwrap();
    let back = queue
        .submit_and_wait(&Request::crypto_read(0, &msg(2, 9), 4096), REQUEST_TIMEOUT)
        .unwrap();
    assert_eq!(
        back.data, plain,
        "data written in the first connection reads back in the second"
    );
    drop(queue);
    drop(frontend);
    // SAFETY: kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(device.process().id() as i32, libc::SIGINT) },
        0
    );
    device.assert_clean_exit("after SIGINT");
}

#[test]
fn a_frontend_without_event_idx_is_served_at_depth() {
    let options = FrontendOptions {
        without_features: feature(VIRTIO_RING_F_EVENT_IDX),
        ..FrontendOptions::default()
    };
    let mut session = Session::start_with(16 << 20, &["--queues", "2"], options);
    assert!(!session.frontend.has_feature(VIRTIO_RING_F_EVENT_IDX));
    let key = random_key();
    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &key, 4096, 8)),
        Status::Ok,
    );
    for queue in 0..2 {
        let tags: Vec<_> = (0..32u64)
            .map(|n| {
                let request = Request::crypto_write(
                    n * 8 + queue as u64 * 1024,
                    &msg(0, u128::from(n)),
                    random_bytes(4096),
                );
                session.queues[queue].submit(&request).expect("submit")
            })
            .collect();
        for tag in tags {
            let done = session.queues[queue]
                .wait_for(tag, REQUEST_TIMEOUT)
                .expect("completion");
            assert_eq!(done.status(), Some(Status::Ok));
        }
    }
    let stats = session.finish();
    assert_eq!(stat_u64(&stats, "stats.crypto_out.requests"), 64);
}
