use icelab_emulator::engine::xts::{Direction, XtsKey};
use std::time::Instant;
fn main() {
    let key = [7u8; 64];
    let x = XtsKey::new(&key);
    for dus in [512usize, 4096] {
        let mut buf = vec![1u8; dus];
        let n = 400_000usize * 4096 / dus;
        let t = Instant::now();
        for i in 0..n { x.crypt_serial(Direction::Encrypt, &mut buf, dus, i as u128); }
        let s = t.elapsed().as_secs_f64();
        println!("dus {dus}: {:.2} GB/s", (n * dus) as f64 / s / 1e9);
    }
}
#[allow(dead_code)]
fn raw() {}
