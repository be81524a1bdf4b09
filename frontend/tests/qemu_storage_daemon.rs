//! The frontend against a real vhost-user-blk peer: qemu-storage-daemon's
//! vhost-user-blk export on a temporary raw image.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use icelab_frontend::{BlkQueue, Error, FrontendOptions, RawDescriptor, RawNext, Request, Segment};
use icelab_protocol::{
    CryptoMsg, DiscardSegment, Dun, RequestType, SECTOR_SIZE, Status,
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, feature,
};
use support::{StorageDaemon, TIMEOUT, pattern};

const MIB: u64 = 1 << 20;

fn single_queue(daemon: &StorageDaemon, options: &FrontendOptions) -> BlkQueue {
    let mut frontend = daemon.connect(options);
    frontend.take_blk_queues().expect("idle queues").remove(0)
}

#[test]
fn handshake_negotiates_and_reads_the_config_space() {
    let daemon = StorageDaemon::start(16 * MIB, 2);
    let mut frontend = daemon.connect(&FrontendOptions::default());
    assert!(frontend.has_feature(VIRTIO_F_VERSION_1));
    assert!(frontend.has_feature(VHOST_USER_F_PROTOCOL_FEATURES));
    assert_eq!(frontend.backend_queue_num(), Some(2));
    assert_eq!(frontend.num_queues(), 2);

    let config = frontend.block_config().expect("GET_CONFIG");
    assert_eq!(config.capacity_sectors, 16 * MIB / SECTOR_SIZE);
    assert_eq!(config.capacity_bytes(), 16 * MIB);
    assert_eq!(config.num_queues, 2);
    assert_eq!(
        config.crypto, None,
        "qemu-storage-daemon has no inline encryption"
    );

    let capacity = frontend
        .get_config(0, 8)
        .expect("GET_CONFIG of the capacity");
    assert_eq!(capacity, (16 * MIB / SECTOR_SIZE).to_le_bytes());
    // Past the daemon's config struct: refused, and the session survives.
    let refused = frontend.get_config(0, 104);
    assert!(
        matches!(refused, Err(Error::BackendRefused { .. })),
        "{refused:?}"
    );
    assert_eq!(frontend.get_config(0, 8).expect("still talking"), capacity);
    assert!(frontend.backend_alive());
}

#[test]
fn caller_chooses_the_features() {
    let daemon = StorageDaemon::start(MIB, 1);
    let options = FrontendOptions {
        without_features: feature(VIRTIO_RING_F_EVENT_IDX) | feature(VIRTIO_RING_F_INDIRECT_DESC),
        ..FrontendOptions::default()
    };
    let mut frontend = daemon.connect(&options);
    assert!(frontend.offered_features() & feature(VIRTIO_RING_F_EVENT_IDX) != 0);
    assert!(!frontend.has_feature(VIRTIO_RING_F_EVENT_IDX));
    let queue = frontend.take_queue(0).expect("queue 0");
    assert!(!queue.event_idx());
    assert!(!queue.indirect_desc());
    let mut queue = BlkQueue::new(queue).expect("idle queue");
    let data = pattern(3, 8192);
    queue
        .submit_and_wait(&Request::write(8, data.clone()), TIMEOUT)
        .expect("OUT")
        .ok()
        .expect("OK");
    let read = queue
        .submit_and_wait(&Request::read(8, 8192), TIMEOUT)
        .expect("IN")
        .ok()
        .expect("OK");
    assert_eq!(read.data, data);
    assert!(
        queue.queue().stats().kicks >= 2,
        "without EVENT_IDX every submission kicks"
    );
}

#[test]
fn write_then_read_back_through_the_device_and_the_image() {
    let daemon = StorageDaemon::start(16 * MIB, 1);
    let mut queue = single_queue(&daemon, &FrontendOptions::default());

    let data = pattern(1, 64 * 1024);
    let sector = 2048;
    let written = queue
        .submit_and_wait(&Request::write(sector, data.clone()), TIMEOUT)
        .expect("OUT");
    assert_eq!(written.status(), Some(Status::Ok), "{written:?}");

    let read = queue
        .submit_and_wait(&Request::read(sector, data.len() as u32), TIMEOUT)
        .expect("IN");
    assert!(read.is_ok(), "{read:?}");
    assert_eq!(read.data, data, "IN returns what OUT wrote");
    assert_eq!(
        read.used_len as usize,
        data.len() + 1,
        "used len counts data and status"
    );

    let flush = queue
        .submit_and_wait(&Request::flush(), TIMEOUT)
        .expect("FLUSH");
    assert!(flush.is_ok(), "{flush:?}");
    assert_eq!(
        daemon.read_image(sector * SECTOR_SIZE, data.len()),
        data,
        "the image holds it"
    );

    // The other way: what is put in the image comes back through IN.
    let direct = pattern(2, 4096);
    daemon.write_image(0, &direct);
    let read = queue
        .submit_and_wait(&Request::read(0, 4096), TIMEOUT)
        .expect("IN");
    assert_eq!(read.data, direct);
}

#[test]
fn data_split_over_many_descriptors_and_indirect_tables() {
    let daemon = StorageDaemon::start(4 * MIB, 1);
    let mut queue = single_queue(&daemon, &FrontendOptions::default());
    assert!(
        queue.queue().indirect_desc(),
        "qemu-storage-daemon offers indirect descriptors"
    );

    let data = pattern(4, 32 * 1024);
    let write = Request::write(64, data.clone()).with_segment_size(512);
    assert_eq!(write.descriptors_needed(), 2 + 64);
    queue
        .submit_and_wait(&write, TIMEOUT)
        .expect("OUT")
        .ok()
        .expect("OK");
    assert_eq!(daemon.read_image(64 * SECTOR_SIZE, data.len()), data);

    let read = Request::read(64, data.len() as u32)
        .with_segment_size(4096)
        .with_indirect(true);
    assert_eq!(read.descriptors_needed(), 1);
    let done = queue
        .submit_and_wait(&read, TIMEOUT)
        .expect("IN")
        .ok()
        .expect("OK");
    assert_eq!(done.data, data);

    // Odd segment sizes too: the device must not care where pieces end.
    let read = Request::read(64, data.len() as u32).with_segment_size(1000);
    let done = queue
        .submit_and_wait(&read, TIMEOUT)
        .expect("IN")
        .ok()
        .expect("OK");
    assert_eq!(done.data, data);
}

#[test]
fn get_id_answers_a_string() {
    let daemon = StorageDaemon::start(MIB, 1);
    let mut queue = single_queue(&daemon, &FrontendOptions::default());
    let id = queue
        .submit_and_wait(&Request::get_id(), TIMEOUT)
        .expect("GET_ID")
        .ok()
        .expect("OK");
    assert!(!id.device_id().is_empty(), "{id:?}");
}

#[test]
fn write_zeroes_and_discard() {
    let daemon = StorageDaemon::start(MIB, 1);
    daemon.write_image(0, &[0xee; 8192]);
    let mut queue = single_queue(&daemon, &FrontendOptions::default());
    let zeroes = Request::write_zeroes(&[DiscardSegment {
        sector: 2,
        num_sectors: 4,
        flags: 0,
    }]);
    queue
        .submit_and_wait(&zeroes, TIMEOUT)
        .expect("WRITE_ZEROES")
        .ok()
        .expect("OK");
    let image = daemon.read_image(0, 8192);
    assert!(image[..1024].iter().all(|b| *b == 0xee));
    assert!(
        image[1024..3072].iter().all(|b| *b == 0),
        "sectors 2..6 zeroed"
    );
    assert!(image[3072..].iter().all(|b| *b == 0xee));

    let discard = Request::discard(&[DiscardSegment {
        sector: 8,
        num_sectors: 8,
        flags: 0,
    }]);
    let done = queue.submit_and_wait(&discard, TIMEOUT).expect("DISCARD");
    assert!(done.is_ok(), "{done:?}");
}

#[test]
fn inline_encryption_requests_are_well_framed_and_answered_unsupp_by_a_stock_device() {
    let daemon = StorageDaemon::start(MIB, 1);
    let mut queue = single_queue(&daemon, &FrontendOptions::default());
    let msg = CryptoMsg {
        slot: 0,
        reserved: 0,
        dun: Dun::from_u64(0),
    };
    for request in [
        Request::get_crypto_modes(),
        Request::crypto_read(0, &msg, 4096),
        Request::crypto_write(0, &msg, vec![1u8; 4096]),
        Request::keyslot_evict_slot(0),
        Request::raw(RequestType::Unsupported(99), 0),
    ] {
        let done = queue
            .submit_and_wait(&request, TIMEOUT)
            .expect("a completion");
        assert_eq!(done.status(), Some(Status::Unsupp), "{request:?}: {done:?}");
        assert!(matches!(
            done.clone().ok(),
            Err(Error::RequestFailed { status: 2, .. })
        ));
    }
    assert!(
        daemon.read_image(0, 4096).iter().all(|b| *b == 0),
        "CRYPTO_OUT wrote nothing"
    );
}

#[test]
fn queue_depth_32_pipelined_with_latencies() {
    const QD: usize = 32;
    const TOTAL: u64 = 1024;
    const BLOCK: usize = 4096;
    let daemon = StorageDaemon::start(8 * MIB, 1);
    let mut queue = single_queue(&daemon, &FrontendOptions::default());
    let sectors_per_block = BLOCK as u64 / SECTOR_SIZE;
    let blocks = 8 * MIB / BLOCK as u64;

    // Writes: keep 32 in flight, each to its own block.
    let mut submitted = 0u64;
    let mut expected = HashMap::new();
    let mut latencies = Vec::new();
    let mut max_in_flight = 0;
    while submitted < TOTAL || queue.in_flight() > 0 {
        while submitted < TOTAL && queue.in_flight() < QD {
            let block = submitted % blocks;
            let data = pattern(1000 + submitted, BLOCK);
            let tag = queue
                .enqueue(&Request::write(block * sectors_per_block, data.clone()))
                .expect("room for QD 32");
            expected.insert(tag, (block, data));
            submitted += 1;
        }
        queue.kick().expect("kick");
        max_in_flight = max_in_flight.max(queue.in_flight());
        let done = queue.reap(TIMEOUT).expect("completion").ok().expect("OK");
        assert!(expected.contains_key(&done.tag));
        latencies.push(done.latency);
    }
    assert_eq!(max_in_flight, QD);
    assert_eq!(latencies.len() as u64, TOTAL);
    latencies.sort();
    eprintln!(
        "QD{QD} 4 KiB writes: p50 {:?}, p99 {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
    assert!(latencies.iter().all(|l| *l > Duration::ZERO));

    // Reads, pipelined the same way, checked against the last write of
    // each block.
    let mut last: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut writes: Vec<_> = expected.into_iter().collect();
    writes.sort_by_key(|(tag, _)| *tag);
    for (_, (block, data)) in writes {
        last.insert(block, data);
    }
    let mut pending = HashMap::new();
    let mut blocks_to_read: Vec<u64> = last.keys().copied().collect();
    blocks_to_read.sort();
    let mut next = blocks_to_read.into_iter();
    loop {
        while queue.in_flight() < QD {
            let Some(block) = next.next() else { break };
            let tag = queue
                .enqueue(&Request::read(block * sectors_per_block, BLOCK as u32))
                .expect("room for QD 32");
            pending.insert(tag, block);
        }
        if queue.in_flight() == 0 {
            break;
        }
        queue.kick().expect("kick");
        let done = queue.reap(TIMEOUT).expect("completion").ok().expect("OK");
        let block = pending.remove(&done.tag).expect("a tag we submitted");
        assert_eq!(done.data, last[&block], "block {block}");
    }
    assert!(pending.is_empty());
}

#[test]
fn two_queues_driven_from_two_threads_at_once() {
    let daemon = StorageDaemon::start(8 * MIB, 2);
    let mut frontend = daemon.connect(&FrontendOptions::default());
    let queues = frontend.take_queues();
    assert_eq!(queues.len(), 2);
    std::thread::scope(|scope| {
        for queue in queues {
            scope.spawn(move || {
                let index = u64::from(queue.index());
                let mut queue = BlkQueue::new(queue).expect("idle queue");
                // Queue i owns the i-th 4 MiB half of the disk.
                let base = index * 4 * MIB / SECTOR_SIZE;
                let mut tags = HashMap::new();
                for n in 0..64u64 {
                    let data = pattern(index * 100 + n, 16 * 1024);
                    let sector = base + n * 32;
                    let tag = queue
                        .enqueue(&Request::write(sector, data.clone()))
                        .expect("room");
                    tags.insert(tag, (sector, data));
                    if queue.in_flight() == 16 {
                        queue.kick().expect("kick");
                        queue.reap(TIMEOUT).expect("completion").ok().expect("OK");
                    }
                }
                queue.kick().expect("kick");
                while queue.in_flight() > 0 {
                    queue.reap(TIMEOUT).expect("completion").ok().expect("OK");
                }
                for (sector, data) in tags.values() {
                    let read = queue
                        .submit_and_wait(&Request::read(*sector, data.len() as u32), TIMEOUT)
                        .expect("IN")
                        .ok()
                        .expect("OK");
                    assert_eq!(&read.data, data, "queue {index} sector {sector}");
                }
            });
        }
    });
    // Each thread's data landed in its half of the image.
    assert_eq!(daemon.read_image(0, 16 * 1024), pattern(0, 16 * 1024));
    assert_eq!(
        daemon.read_image(4 * MIB, 16 * 1024),
        pattern(100, 16 * 1024)
    );
}

#[test]
fn waiting_without_a_kick_times_out_and_a_kick_completes() {
    let daemon = StorageDaemon::start(MIB, 1);
    let mut queue = single_queue(&daemon, &FrontendOptions::default());
    let tag = queue.enqueue(&Request::flush()).expect("room");
    let started = std::time::Instant::now();
    let error = queue
        .reap(Duration::from_millis(200))
        .expect_err("the device was never kicked");
    assert!(
        matches!(error, Error::Timeout { in_flight: 1, .. }),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        queue.kick().expect("kick"),
        "the device wants a first notification"
    );
    let done = queue.wait_for(tag, TIMEOUT).expect("completion");
    assert!(done.is_ok());
    let nothing = queue.reap(Duration::from_millis(10));
    assert!(
        matches!(nothing, Err(Error::InvalidArgument(_))),
        "nothing in flight: {nothing:?}"
    );
}

#[test]
fn a_backend_that_dies_is_reported_not_waited_for() {
    let mut daemon = StorageDaemon::start(MIB, 1);
    let mut queue = single_queue(&daemon, &FrontendOptions::default());
    queue
        .submit_and_wait(&Request::flush(), TIMEOUT)
        .expect("alive")
        .ok()
        .expect("OK");
    daemon.kill();
    queue.enqueue(&Request::flush()).expect("room");
    let started = std::time::Instant::now();
    let error = queue
        .reap(Duration::from_secs(30))
        .expect_err("nobody is there");
    assert!(matches!(error, Error::Disconnected { queue: 0 }), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "noticed at once"
    );
}

#[test]
fn queue_full_is_an_error_and_indirect_chains_take_one_slot() {
    let daemon = StorageDaemon::start(MIB, 1);
    let options = FrontendOptions {
        queue_size: 8,
        ..FrontendOptions::default()
    };
    let mut queue = single_queue(&daemon, &options);
    // 3 descriptors each: two fit in 8, the third does not.
    queue.enqueue(&Request::read(0, 512)).expect("room");
    queue.enqueue(&Request::read(1, 512)).expect("room");
    let full = queue.enqueue(&Request::read(2, 512));
    assert!(
        matches!(
            full,
            Err(Error::QueueFull {
                needed: 3,
                free: 2,
                ..
            })
        ),
        "{full:?}"
    );
    // Indirect requests take one slot each.
    queue
        .enqueue(&Request::read(2, 512).with_indirect(true))
        .expect("room");
    queue
        .enqueue(&Request::read(3, 512).with_indirect(true))
        .expect("room");
    assert_eq!(queue.queue().free_descriptors(), 0);
    queue.kick().expect("kick");
    for _ in 0..4 {
        queue.reap(TIMEOUT).expect("completion").ok().expect("OK");
    }
    assert_eq!(
        queue.queue().free_descriptors(),
        8,
        "every descriptor is free again"
    );
    // Round the ring several times to cover index wrap-around.
    for n in 0..100u64 {
        let done = queue
            .submit_and_wait(&Request::read(n % 16, 512), TIMEOUT)
            .expect("IN");
        assert!(done.is_ok());
    }
}

#[test]
fn prepared_requests_can_be_edited_and_raw_chains_built() {
    let daemon = StorageDaemon::start(MIB, 1);
    let mut queue = single_queue(&daemon, &FrontendOptions::default());
    let memory = queue.queue().memory().clone();

    // A well-formed OUT assembled by hand from raw descriptors.
    let data = pattern(7, 1024);
    let prepared = Request::write(4, data.clone())
        .prepare(&memory)
        .expect("room");
    let raw = icelab_frontend::chain::link(&prepared.segments);
    let tag = queue
        .submit_raw(prepared, &raw, Vec::new())
        .expect("submitted");
    let done = queue.wait_for(tag, TIMEOUT).expect("completion");
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(daemon.read_image(4 * SECTOR_SIZE, 1024), data);

    // The same through a hand-written indirect table.
    let data = pattern(8, 1024);
    let prepared = Request::write(6, data.clone())
        .prepare(&memory)
        .expect("room");
    let table = queue
        .write_indirect_table(&icelab_frontend::chain::link(&prepared.segments))
        .expect("room");
    let head = RawDescriptor::indirect(table.addr(), prepared.segments.len() as u32);
    let tag = queue
        .submit_raw(prepared, &[head], vec![table])
        .expect("submitted");
    assert!(queue.wait_for(tag, TIMEOUT).expect("completion").is_ok());
    assert_eq!(daemon.read_image(6 * SECTOR_SIZE, 1024), data);

    // Edited segments: the status split off into a segment of its own
    // address is still read back from where the request says.
    let prepared = Request::read(6, 1024).prepare(&memory).expect("room");
    let segments: Vec<Segment> = prepared.segments.clone();
    assert_eq!(segments.len(), 3);
    let tag = queue.enqueue_prepared(prepared).expect("room");
    queue.kick().expect("kick");
    assert_eq!(queue.wait_for(tag, TIMEOUT).expect("completion").data, data);
}

#[test]
fn a_looped_chain_does_not_hang_the_frontend() {
    // libvhost-user treats a loop as fatal for the device; whatever the
    // peer does, the frontend must come back with an answer or an error.
    let daemon = StorageDaemon::start(MIB, 1);
    let mut queue = single_queue(&daemon, &FrontendOptions::default());
    let prepared = Request::read(0, 512)
        .prepare(&memory_of(&queue))
        .expect("room");
    let mut raw = icelab_frontend::chain::link(&prepared.segments);
    let last = raw.len() - 1;
    raw[last] = raw[last].with_next(RawNext::Index(0));
    let tag = queue
        .submit_raw(prepared, &raw, Vec::new())
        .expect("submitted");
    match queue.wait_for(tag, Duration::from_secs(2)) {
        Ok(done) => assert!(!done.is_ok(), "a looped chain cannot succeed: {done:?}"),
        Err(Error::Timeout { .. } | Error::Disconnected { .. }) => {}
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn memory_of(queue: &BlkQueue) -> icelab_frontend::SharedMemory {
    queue.queue().memory().clone()
}
