//! Regressions of guest- and frontend-triggerable device bugs, each
//! through a real `icelab serve` and the native frontend: the device must
//! answer, keep serving, exit when asked, and never hold a key across a
//! reset.

mod ice;
mod support;

use ice::{Session, msg, random_bytes, random_key};
use icelab_emulator::protocol::{KeyDesc, Status};
use icelab_frontend::blk::Request;
use std::time::Duration;
use support::stat_u64;

const MIB: u64 = 1 << 20;

/// A guest that sets its avail index more than a queue ahead of what the
/// device has consumed (with EVENT_IDX) used to spin a queue thread forever
/// (~70% of a core, tens of MB/s of log) and keep the daemon from exiting.
/// Now the queue is marked broken once, the other queues keep working, and
/// the device exits when the frontend leaves.
#[test]
fn a_corrupt_avail_index_breaks_only_its_queue_and_never_hangs_the_device() {
    let mut session = Session::start(4 * MIB, &["--queues", "2"]);
    assert!(
        session
            .frontend
            .has_feature(icelab_emulator::protocol::VIRTIO_RING_F_EVENT_IDX),
        "the case needs EVENT_IDX"
    );
    session.expect(0, &Request::get_id(), Status::Ok);
    let queue = session.queues[0].queue();
    let avail_idx = queue.layout().avail_idx();
    let mut current = [0u8; 2];
    queue
        .memory()
        .read(avail_idx, &mut current)
        .expect("read avail idx");
    let corrupt = u16::from_le_bytes(current)
        .wrapping_add(queue.size())
        .wrapping_add(5);
    queue
        .memory()
        .write(avail_idx, &corrupt.to_le_bytes())
        .expect("write avail idx");
    session.queues[0].kick_always().expect("kick");
    std::thread::sleep(Duration::from_millis(500));

    // The other request queue and the control queue still answer.
    session.expect(1, &Request::get_id(), Status::Ok);
    session.expect(session.control(), &Request::get_crypto_modes(), Status::Ok);
    let log_bytes = std::fs::metadata(session.device.process().stderr_log())
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        log_bytes < 64 * 1024,
        "the broken queue flooded the log: {log_bytes} bytes"
    );
    // finish() fails if the device does not exit once the frontend leaves.
    let stats = session.finish();
    assert_eq!(stat_u64(&stats, "stats.rejected.by_kind.broken-ring"), 1);
}

/// An avail ring entry naming a descriptor past the table has no chain
/// and cannot be returned: it used to log an error each time and leave
/// the chains after it for the next kick. Now it is counted and logged as
/// a refusal (rate-limited) and the chains after it are served at once.
#[test]
fn an_avail_entry_past_the_descriptor_table_is_dropped_and_the_rest_served() {
    let mut session = Session::start(4 * MIB, &["--queues", "1"]);
    let size = session.queues[0].queue().size();
    for bogus in [size, size + 7, u16::MAX] {
        session.queues[0].publish_raw_head(bogus).expect("publish");
    }
    // The valid request is published behind them, in the same kick.
    session.expect(0, &Request::get_id(), Status::Ok);
    let stats = session.finish();
    assert_eq!(
        stat_u64(&stats, "stats.rejected.by_kind.head-out-of-range"),
        3
    );
}

/// A reset by the frontend (QEMU's sequence when the guest resets the
/// device: GET_VRING_BASE on every queue, then SET_FEATURES and the rings
/// again) must empty every keyslot, as a hardware reset would.
#[test]
fn keys_do_not_survive_a_device_reset() {
    let mut session = Session::start(4 * MIB, &[]);
    let key = random_key();
    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &key, 4096, 8)),
        Status::Ok,
    );
    session.expect(
        0,
        &Request::crypto_write(0, &msg(0, 1), random_bytes(4096)),
        Status::Ok,
    );
    let features = session.frontend.acked_features();
    session
        .frontend
        .vhost_request("SET_FEATURES", |v| {
            use vhost::VhostBackend;
            v.set_features(features)
        })
        .expect("SET_FEATURES");
    session.expect(0, &Request::crypto_read(0, &msg(0, 1), 4096), Status::IoErr);
    let stats = session.finish();
    assert_eq!(stat_u64(&stats, "stats.keyslots.evicted_by_reset"), 1);
}

/// With `--persist`, a frontend that connects right after the previous one
/// died (mid-request) used to land in the backlog of a listener that was
/// being replaced and was reset (5 of 12 reconnects failed at
/// SET_OWNER/GET_FEATURES). One listener now lives as long as the device.
#[test]
fn immediate_reconnects_under_persist_are_all_served() {
    use icelab_frontend::{Frontend, FrontendOptions};
    use support::{Device, create_image, temp_dir};
    let dir = temp_dir("reconnect");
    let image = dir.path().join("disk.img");
    let socket = dir.path().join("icelab.sock");
    create_image(&image, 4 * MIB);
    let mut device = Device::builder(&image, &socket).arg("--persist").spawn();
    let options = FrontendOptions {
        connect_timeout: Duration::from_millis(200),
        ..FrontendOptions::default()
    };
    let mut failures = Vec::new();
    for round in 0..12 {
        match Frontend::connect(&socket, &options) {
            Ok(mut frontend) => {
                let mut queue =
                    icelab_frontend::blk::BlkQueue::new(frontend.take_queues().remove(0))
                        .expect("queue");
                // Leave a write in flight and vanish with it.
                queue
                    .submit(&Request::write(0, random_bytes(64 * 1024)))
                    .expect("submit");
            }
            Err(error) => failures.push(format!("round {round}: {error}")),
        }
    }
    assert!(
        failures.is_empty(),
        "reconnects failed:\n{}\n{}",
        failures.join("\n"),
        device.logs()
    );
    assert!(
        device.process().try_wait().is_none(),
        "--persist must keep serving\n{}",
        device.logs()
    );
}
