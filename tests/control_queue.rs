//! The control queue (docs/PROTOCOL.md, "Virtqueues" and "Feature
//! negotiation"), through the native frontend against a real `icelab
//! serve`: key management travels only on the control queue, inline
//! encryption needs both VIRTIO_BLK_F_INLINE_ENCRYPTION and
//! VIRTIO_BLK_F_CTRL_VQ, and the key descriptor is the draft's 152 bytes.

mod ice;
mod support;

use ice::{Session, msg, oracle_encrypt, random_bytes, random_key};
use icelab_emulator::protocol::{
    KeyDesc, RequestType, Status, VIRTIO_BLK_F_CTRL_VQ, VIRTIO_BLK_F_INLINE_ENCRYPTION, feature,
};
use icelab_frontend::FrontendOptions;
use icelab_frontend::blk::Request;
use support::{read_at, stat_u64};

const MIB: u64 = 1 << 20;

#[test]
fn the_device_offers_a_control_queue_after_the_request_queues() {
    let mut session = Session::start(4 * MIB, &["--queues", "3"]);
    assert!(session.frontend.has_feature(VIRTIO_BLK_F_CTRL_VQ));
    assert!(session.frontend.has_feature(VIRTIO_BLK_F_INLINE_ENCRYPTION));
    assert_eq!(session.frontend.num_queues(), 3);
    assert_eq!(
        session.frontend.backend_queue_num(),
        Some(4),
        "GET_QUEUE_NUM counts the control queue"
    );
    assert_eq!(session.frontend.control_queue_index(), Some(3));
    assert_eq!(
        session.frontend.block_config().expect("config").num_queues,
        3,
        "config num_queues counts request queues only"
    );
    assert_eq!(session.control(), 3);
    session.finish();
}

#[test]
fn key_commands_on_a_request_queue_are_refused_and_program_nothing() {
    let mut session = Session::start(4 * MIB, &["--queues", "2"]);
    let key = random_key();
    let desc = KeyDesc::raw_aes_256_xts(0, &key, 4096, 8);
    for queue in [0, 1] {
        session.expect(queue, &Request::keyslot_program(&desc), Status::Unsupp);
    }
    let before = session.image_bytes();
    session.expect(
        0,
        &Request::crypto_write(0, &msg(0, 0), random_bytes(4096)),
        Status::IoErr,
    );
    assert_eq!(session.image_bytes(), before, "slot 0 stayed empty");

    // The same descriptor on the control queue works.
    session.expect(
        session.control(),
        &Request::keyslot_program(&desc),
        Status::Ok,
    );
    let plain = random_bytes(4096);
    session.expect(
        1,
        &Request::crypto_write(0, &msg(0, 7), plain.clone()),
        Status::Ok,
    );
    assert_eq!(
        read_at(&session.image, 0, 4096),
        oracle_encrypt(&key, &plain, 4096, 7)
    );
    let stats = session.finish();
    assert_eq!(stat_u64(&stats, "stats.rejected.by_kind.wrong-queue"), 2);
    assert_eq!(stat_u64(&stats, "stats.keyslots.programmed"), 1);
    assert_eq!(stat_u64(&stats, "stats.control_queue.keyslot_commands"), 1);
}

#[test]
fn crypto_without_ctrl_vq_negotiated_is_refused() {
    // One request queue, as a driver that does not know CTRL_VQ would
    // read from config num_queues.
    let options = FrontendOptions {
        without_features: feature(VIRTIO_BLK_F_CTRL_VQ),
        num_queues: Some(1),
        ..FrontendOptions::default()
    };
    let mut session = Session::start_with(4 * MIB, &[], options);
    assert!(session.frontend.has_feature(VIRTIO_BLK_F_INLINE_ENCRYPTION));
    assert!(!session.frontend.has_feature(VIRTIO_BLK_F_CTRL_VQ));
    assert_eq!(session.queues.len(), 1, "no control queue was set up");
    let before = session.image_bytes();
    session.expect(
        0,
        &Request::crypto_write(0, &msg(0, 0), random_bytes(4096)),
        Status::Unsupp,
    );
    session.expect(
        0,
        &Request::crypto_read(0, &msg(0, 0), 4096),
        Status::Unsupp,
    );
    session.expect(
        0,
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &random_key(), 4096, 8)),
        Status::Unsupp,
    );
    assert_eq!(session.image_bytes(), before);
    // Plain I/O is unaffected.
    session.expect(0, &Request::write(0, random_bytes(4096)), Status::Ok);
    let stats = session.finish();
    assert_eq!(
        stat_u64(&stats, "stats.rejected.by_kind.crypto-not-negotiated"),
        2
    );
    assert_eq!(stat_u64(&stats, "stats.rejected.by_kind.wrong-queue"), 1);
    assert_eq!(stat_u64(&stats, "stats.keyslots.programmed"), 0);
}

#[test]
fn the_key_descriptor_is_152_bytes() {
    assert_eq!(KeyDesc::SIZE, 152);
    let mut session = Session::start(4 * MIB, &[]);
    let key = random_key();
    let desc = KeyDesc::raw_aes_256_xts(2, &key, 4096, 8);
    let mut long = desc.encode().to_vec();
    long.extend_from_slice(&[0; 4]);
    session.expect(
        session.control(),
        &Request::raw(RequestType::KeyslotProgram, 0).with_key_payload(&long),
        Status::IoErr,
    );
    session.expect(
        session.control(),
        &Request::raw(RequestType::KeyslotProgram, 0).with_key_payload(&desc.encode()),
        Status::Ok,
    );
    session.expect(
        0,
        &Request::crypto_write(16, &msg(2, 1), random_bytes(4096)),
        Status::Ok,
    );
    let stats = session.finish();
    assert_eq!(stat_u64(&stats, "stats.rejected.by_kind.payload-size"), 1);
    assert_eq!(stat_u64(&stats, "stats.keyslots.programmed"), 1);
}
