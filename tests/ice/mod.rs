//! Fixtures for tests that drive a real `icelab serve` through the native
//! vhost-user frontend: a session (device process + negotiated frontend),
//! key descriptors, and the `xts-mode` oracle the device's ciphertext is
//! checked against.
//!
//! Use it with `mod ice; mod support;`.

#![allow(dead_code)]

use crate::support::{Device, create_image, temp_dir};
use aes::Aes256;
use aes::cipher::KeyInit;
use icelab_emulator::protocol::{CryptoMsg, Dun, Status};
use icelab_frontend::blk::{BlkQueue, Completion, Request};
use icelab_frontend::{Frontend, FrontendOptions};
use std::path::PathBuf;
use std::time::Duration;
use xts_mode::Xts128;

/// Longest wait for one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A running device with a connected frontend.
pub struct Session {
    /// Keeps the temp dir alive.
    pub dir: tempfile::TempDir,
    /// The image path.
    pub image: PathBuf,
    /// The stats file path.
    pub stats: PathBuf,
    /// The trace file path.
    pub trace: PathBuf,
    /// The device process.
    pub device: Device,
    /// The negotiated frontend.
    pub frontend: Frontend,
    /// Its request queues, then the control queue when CTRL_VQ was acked.
    pub queues: Vec<BlkQueue>,
    /// Index of the control queue in `queues`, if any.
    control: Option<usize>,
}

impl Session {
    /// Starts `icelab serve` on a fresh `size`-byte image with `args`
    /// and connects with default frontend options.
    pub fn start(size: u64, args: &[&str]) -> Self {
        Self::start_with(size, args, FrontendOptions::default())
    }

    /// Like [`Session::start`] with explicit frontend options.
    pub fn start_with(size: u64, args: &[&str], options: FrontendOptions) -> Self {
        let dir = temp_dir("device");
        let image = dir.path().join("disk.img");
        let socket = dir.path().join("icelab.sock");
        let stats = dir.path().join("stats.json");
        let trace = dir.path().join("trace.jsonl");
        create_image(&image, size);
        let device = Device::builder(&image, &socket)
            .stats(&stats)
            .arg("--trace")
            .arg(&trace)
            .args(args)
            .spawn();
        let mut frontend = Frontend::connect(&socket, &options).unwrap_or_else(|error| {
            panic!("cannot connect to icelab serve: {error}\n{}", device.logs())
        });
        let mut queues: Vec<BlkQueue> = frontend
            .take_queues()
            .into_iter()
            .map(|queue| BlkQueue::new(queue).expect("queue driver"))
            .collect();
        let control = frontend.take_control_queue().map(|queue| {
            queues.push(BlkQueue::new(queue).expect("control queue driver"));
            queues.len() - 1
        });
        Self {
            dir,
            image,
            stats,
            trace,
            device,
            frontend,
            queues,
            control,
        }
    }

    /// Index of the control queue in `queues`.
    ///
    /// # Panics
    ///
    /// When the frontend did not negotiate VIRTIO_BLK_F_CTRL_VQ.
    #[track_caller]
    pub fn control(&self) -> usize {
        self.control
            .expect("the session has no control queue (VIRTIO_BLK_F_CTRL_VQ not negotiated)")
    }

    /// Submits on queue `queue` and waits.
    pub fn run(&mut self, queue: usize, request: &Request) -> Completion {
        self.queues[queue]
            .submit_and_wait(request, REQUEST_TIMEOUT)
            .unwrap_or_else(|error| {
                panic!(
                    "{:?} on queue {queue}: {error}\n{}",
                    request.request_type(),
                    self.device.logs()
                )
            })
    }

    /// Submits and asserts the status.
    #[track_caller]
    pub fn expect(&mut self, queue: usize, request: &Request, status: Status) -> Completion {
        let completion = self.run(queue, request);
        assert_eq!(
            completion.status(),
            Some(status),
            "{:?}: status {} (used_len {})\n{}",
            request.request_type(),
            completion.status,
            completion.used_len,
            self.device.logs()
        );
        completion
    }

    /// The device's trace so far, one JSON value per event.
    pub fn trace_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.trace)
            .expect("trace file")
            .lines()
            .map(|line| serde_json::from_str(line).expect("JSON line"))
            .collect()
    }

    /// The whole image file.
    pub fn image_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.image).expect("read the image")
    }

    /// Disconnects the frontend and waits for a clean exit; returns the
    /// final stats.
    pub fn finish(mut self) -> serde_json::Value {
        drop(self.queues);
        drop(self.frontend);
        self.device
            .assert_clean_exit("after the frontend disconnected");
        self.device.stats()
    }
}

/// A crypto_msg for `slot` starting at `dun`.
pub fn msg(slot: u32, dun: u128) -> CryptoMsg {
    CryptoMsg {
        slot,
        reserved: 0,
        dun: Dun::from_u128(dun),
    }
}

/// A random 64-byte key.
pub fn random_key() -> [u8; 64] {
    let mut key = [0u8; 64];
    rand::fill(&mut key[..]);
    key
}

/// Random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::fill(&mut data[..]);
    data
}

/// The oracle: AES-256-XTS of `data` as data units of `data_unit_size`
/// starting at `dun`, by the `xts-mode` crate (independent of the engine).
pub fn oracle_encrypt(key: &[u8; 64], data: &[u8], data_unit_size: usize, dun: u128) -> Vec<u8> {
    let mut out = data.to_vec();
    oracle(key).encrypt_area(&mut out, data_unit_size, dun, |i| i.to_le_bytes().into());
    out
}

/// The oracle's decryption.
pub fn oracle_decrypt(key: &[u8; 64], data: &[u8], data_unit_size: usize, dun: u128) -> Vec<u8> {
    let mut out = data.to_vec();
    oracle(key).decrypt_area(&mut out, data_unit_size, dun, |i| i.to_le_bytes().into());
    out
}

fn oracle(key: &[u8; 64]) -> Xts128<Aes256> {
    let k1 = Aes256::new_from_slice(&key[..32]).expect("32-byte key");
    let k2 = Aes256::new_from_slice(&key[32..]).expect("32-byte key");
    Xts128::new(k1, k2)
}
