//! In-crate tests of the device that need more than one of its modules:
//! descriptor chains on a real split virtqueue in guest memory, served by
//! [`super::request::serve`] (`malformed`, `contract`) or by the backend's
//! serve loop (`serve_loop`) against a tempfile image, without a process
//! or a socket.

mod contract;
mod malformed;
mod serve_loop;
