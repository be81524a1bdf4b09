//! A virtio-blk request queue on top of one [`Queue`]: submit typed
//! requests, reap typed completions, pipelined or one at a time.
//!
//! [`BlkQueue::submit`] returns a [`Tag`] at once; [`BlkQueue::reap`]
//! returns completions in the order the device finishes them, each with
//! its latency. [`BlkQueue::submit_and_wait`] waits for its own request
//! and keeps any other completion that arrives meanwhile for the next
//! reap. Like the queue, a `BlkQueue` is `Send`: one per thread.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::blk::request::{Completion, PreparedRequest, Request, Tag};
use crate::chain::{RawDescriptor, Segment};
use crate::error::{Error, Result};
use crate::memory::GuestBuffer;
use crate::queue::{Queue, UsedElement};

struct Pending {
    tag: Tag,
    prepared: PreparedRequest,
    _keep: Vec<GuestBuffer>,
    submitted: Instant,
}

/// Typed virtio-blk requests over one virtqueue.
pub struct BlkQueue {
    queue: Queue,
    /// Indexed by head descriptor.
    pending: Vec<Option<Pending>>,
    ready: VecDeque<Completion>,
    next_tag: u64,
}

impl std::fmt::Debug for BlkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkQueue")
            .field("queue", &self.queue)
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl BlkQueue {
    /// Wraps a queue taken from [`crate::Frontend::take_queues`]. The queue
    /// must have nothing in flight.
    pub fn new(queue: Queue) -> Result<Self> {
        if queue.in_flight() != 0 {
            return Err(Error::InvalidArgument(format!(
                "queue {} already has {} chain(s) in flight",
                queue.index(),
                queue.in_flight()
            )));
        }
        let pending = (0..queue.size()).map(|_| None).collect();
        Ok(Self {
            queue,
            pending,
            ready: VecDeque::new(),
            next_tag: 0,
        })
    }

    /// The underlying queue (layout, stats, free descriptors).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Makes a head index available with no request behind it (see
    /// [`Queue::publish_raw_head`]). Does not kick.
    pub fn publish_raw_head(&mut self, head: u16) -> Result<()> {
        self.queue.publish_raw_head(head)
    }

    /// Gives the queue back; fails while requests are in flight.
    pub fn into_queue(self) -> Result<Queue> {
        if self.queue.in_flight() != 0 {
            return Err(Error::InvalidArgument(format!(
                "queue {} still has {} request(s) in flight",
                self.queue.index(),
                self.queue.in_flight()
            )));
        }
        Ok(self.queue)
    }

    /// Requests submitted and not yet reaped (excluding completions
    /// already collected and waiting in [`BlkQueue::reap`]'s buffer).
    pub fn in_flight(&self) -> usize {
        self.queue.in_flight()
    }

    /// Completions collected but not yet returned.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// Writes `request` into guest memory and makes it available, without
    /// kicking; call [`BlkQueue::kick`] after a batch.
    pub fn enqueue(&mut self, request: &Request) -> Result<Tag> {
        if request.descriptors_needed() > self.queue.free_descriptors() {
            return Err(Error::QueueFull {
                queue: self.queue.index(),
                needed: request.descriptors_needed(),
                free: self.queue.free_descriptors(),
            });
        }
        let prepared = request.prepare(self.queue.memory())?;
        self.enqueue_prepared(prepared)
    }

    /// [`BlkQueue::enqueue`] then [`BlkQueue::kick`].
    pub fn submit(&mut self, request: &Request) -> Result<Tag> {
        let tag = self.enqueue(request)?;
        self.kick()?;
        Ok(tag)
    }

    /// Makes a prepared (possibly edited) request available as the chain of
    /// its segments, through an indirect table if it says so. No kick.
    pub fn enqueue_prepared(&mut self, prepared: PreparedRequest) -> Result<Tag> {
        let segments: Vec<Segment> = prepared.segments.clone();
        let head = if prepared.indirect {
            self.queue.add_indirect_chain(&segments)?
        } else {
            self.queue.add_chain(&segments)?
        };
        Ok(self.track(head, prepared, Vec::new()))
    }

    /// Makes `descriptors` available as they are (loops, dangling links,
    /// indirect tables, ...), reading the completion back through
    /// `prepared`'s status and data addresses. `keep` lives until the
    /// completion (e.g. an indirect table from
    /// [`Queue::write_indirect_table`], reached through
    /// [`BlkQueue::queue`]). Kicks.
    pub fn submit_raw(
        &mut self,
        prepared: PreparedRequest,
        descriptors: &[RawDescriptor],
        keep: Vec<GuestBuffer>,
    ) -> Result<Tag> {
        let head = self.queue.add_raw_chain(descriptors, Vec::new())?;
        let tag = self.track(head, prepared, keep);
        self.kick()?;
        Ok(tag)
    }

    /// Writes an indirect descriptor table (see
    /// [`Queue::write_indirect_table`]).
    pub fn write_indirect_table(&self, table: &[RawDescriptor]) -> Result<GuestBuffer> {
        self.queue.write_indirect_table(table)
    }

    fn track(&mut self, head: u16, prepared: PreparedRequest, keep: Vec<GuestBuffer>) -> Tag {
        let tag = Tag(self.next_tag);
        self.next_tag += 1;
        self.pending[usize::from(head)] = Some(Pending {
            tag,
            prepared,
            _keep: keep,
            submitted: Instant::now(),
        });
        tag
    }

    /// Notifies the device unless it suppressed notifications; returns
    /// whether it was notified.
    pub fn kick(&mut self) -> Result<bool> {
        self.queue.kick()
    }

    /// Notifies the device whatever it asked.
    pub fn kick_always(&mut self) -> Result<()> {
        self.queue.kick_always()
    }

    /// Returns the next completion, waiting up to `timeout`.
    pub fn reap(&mut self, timeout: Duration) -> Result<Completion> {
        if let Some(completion) = self.ready.pop_front() {
            return Ok(completion);
        }
        let element = self.queue.wait_used(timeout)?;
        self.complete(element)
    }

    /// Returns the next completion if one is there, without waiting.
    pub fn try_reap(&mut self) -> Result<Option<Completion>> {
        if let Some(completion) = self.ready.pop_front() {
            return Ok(Some(completion));
        }
        match self.queue.pop_used()? {
            Some(element) => self.complete(element).map(Some),
            None => Ok(None),
        }
    }

    /// Submits `request` and waits up to `timeout` for its completion.
    /// Other requests' completions that arrive meanwhile are kept for
    /// [`BlkQueue::reap`].
    pub fn submit_and_wait(&mut self, request: &Request, timeout: Duration) -> Result<Completion> {
        let tag = self.submit(request)?;
        self.wait_for(tag, timeout)
    }

    /// Waits up to `timeout` for the completion of `tag`, keeping others.
    pub fn wait_for(&mut self, tag: Tag, timeout: Duration) -> Result<Completion> {
        if let Some(position) = self.ready.iter().position(|c| c.tag == tag)
            && let Some(completion) = self.ready.remove(position)
        {
            return Ok(completion);
        }
        if !self
            .pending
            .iter()
            .flatten()
            .any(|pending| pending.tag == tag)
        {
            return Err(Error::InvalidArgument(format!(
                "queue {}: {tag:?} is not in flight (never submitted or already reaped)",
                self.queue.index()
            )));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let element = self
                .queue
                .wait_used(remaining)
                .map_err(|error| match error {
                    Error::Timeout {
                        queue, in_flight, ..
                    } => Error::Timeout {
                        queue,
                        waited: timeout,
                        in_flight,
                    },
                    other => other,
                })?;
            let completion = self.complete(element)?;
            if completion.tag == tag {
                return Ok(completion);
            }
            self.ready.push_back(completion);
        }
    }

    fn complete(&mut self, element: UsedElement) -> Result<Completion> {
        let pending = self
            .pending
            .get_mut(usize::from(element.head))
            .and_then(Option::take)
            .ok_or_else(|| Error::BackendBug {
                what: format!(
                    "queue {}: completion for descriptor {} that carries no request",
                    self.queue.index(),
                    element.head
                ),
            })?;
        let latency = pending.submitted.elapsed();
        pending.prepared.complete(element.len, latency, pending.tag)
    }
}
