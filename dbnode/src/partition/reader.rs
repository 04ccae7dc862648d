//! Reads from the local copy (docs/design.md "Read path"): a read is served once the copy is
//! readable at the sequence the gateway asks for (read-your-writes), in the log epoch it names,
//! and its answer names the sequence it reflects.

use protocol::{timing, CountRequest, GetRequest, ProtocolError, Reply, Response, ScanRequest};

use super::{Partition, MAX_PAGE, READ_WAIT};

/// The most record bytes one scan answer carries: well under NATS's 1 MB message limit
/// (a page of 1,000 maximal records would be some 1.5 MB).
const MAX_PAGE_BYTES: usize = 512 * 1024;

impl Partition {
    /// Read-your-writes: waits briefly for `min_seq` of log `epoch` to be readable, else
    /// answers `Behind`. Returns the readable sequence the read is served at.
    async fn ensure_readable(
        &self,
        min_seq: u64,
        epoch: u64,
        deadline: u64,
    ) -> Result<u64, ProtocolError> {
        let Some(left) = timing::remaining(deadline) else {
            return Err(ProtocolError::Unavailable(
                "the request's deadline passed".into(),
            ));
        };
        let ours = self.epoch();
        if epoch != 0 && epoch < ours {
            return Ok(self.readable()); // a recreated log: past anything of the old one
        }
        if epoch > ours {
            return Err(ProtocolError::Behind {
                applied: self.readable(),
            });
        }
        let readable = self.readable();
        if readable >= min_seq {
            return Ok(readable);
        }
        if self.wait_readable(min_seq, READ_WAIT.min(left)).await {
            return Ok(self.readable());
        }
        Err(ProtocolError::Behind {
            applied: self.readable(),
        })
    }

    /// Serves a read from the local copy.
    pub async fn get(&self, req: GetRequest) -> Response {
        self.read(req.min_seq, req.epoch, req.deadline, || {
            match self.storage.get(self.id, &req.id)? {
                Some(found) => Ok(Reply::User(found)),
                None => Err(ProtocolError::NotFound),
            }
        })
        .await
    }

    /// Serves a page of a LIST from the local copy.
    pub async fn scan(&self, req: ScanRequest) -> Response {
        let limit = req.limit.clamp(1, MAX_PAGE) as usize;
        self.read(req.min_seq, req.epoch, req.deadline, || {
            let (items, more) = self.storage.scan(
                self.id,
                req.after.as_deref(),
                limit,
                req.group,
                MAX_PAGE_BYTES,
            )?;
            Ok(Reply::Page { items, more })
        })
        .await
    }

    /// Serves a COUNT from the counters kept with the records.
    pub async fn count(&self, req: CountRequest) -> Response {
        self.read(req.min_seq, req.epoch, req.deadline, || {
            Ok(Reply::Count {
                count: self.storage.count(self.id, req.group)?,
            })
        })
        .await
    }

    /// Runs `read` on the local copy once it is readable at `min_seq`; the answer names the
    /// readable sequence it reflects.
    async fn read(
        &self,
        min_seq: u64,
        epoch: u64,
        deadline: u64,
        read: impl FnOnce() -> Result<Reply, ProtocolError>,
    ) -> Response {
        let response = match self.ensure_readable(min_seq, epoch, deadline).await {
            // A page or a count may include entries applied after `seen`: answer with what the
            // copy had applied once it read (a record carries its own version).
            Ok(seen) => match read() {
                Ok(reply @ (Reply::Page { .. } | Reply::Count { .. })) => {
                    Response::new(Ok(reply), seen.max(self.applied()))
                }
                answer => Response::new(answer, seen),
            },
            Err(e) => Response::new(Err(e), 0),
        };
        Response {
            epoch: self.epoch(),
            ..response
        }
    }
}
