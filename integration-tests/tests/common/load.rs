//! Load generators: clients that write for a while, each write with an Idempotency-Key and one
//! retry, and record what was acknowledged and what failed.

use std::collections::HashSet;

use integration_tests::{etag_of, HttpReply};
use reqwest::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use super::ledger::Ledger;
use super::writes::{write_retried, Failures, Write};
use super::{user, Api};

/// A tiny deterministic generator, so load runs choose the same kinds of writes every time.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// What one load client did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// What was acknowledged.
    pub ledger: Ledger,
    /// What failed, and when.
    pub failures: Failures,
    /// Writes whose attempts both failed: the outcome is unknown until re-sent with the key.
    pub unresolved: Vec<Write>,
    /// Writes sent (retries not counted).
    pub writes: u64,
}

/// Creates and partially updates its own records (across every partition, by id hash) until
/// `until`, each write with an Idempotency-Key and one retry. A record whose write failed is
/// not written again until the end, when the write is re-sent with its key.
pub async fn load_client(api: Api, client: u32, until: Instant) -> LoadReport {
    let mut report = LoadReport::default();
    let mut mine: Vec<String> = Vec::new();
    let mut frozen: HashSet<String> = HashSet::new();
    let mut random = 0x9E37_79B9_7F4A_7C15 ^ u64::from(client + 1);
    let mut created = 0;
    while Instant::now() < until {
        let r = next_random(&mut random);
        let usable: Vec<&String> = mine.iter().filter(|id| !frozen.contains(*id)).collect();
        let write = if usable.len() < 5 || r & 3 == 0 {
            created += 1;
            let id = format!("load-{client}-{created:05}");
            mine.push(id.clone());
            Write::create(user(&id, &format!("Load {client}"), (r % 1000) as u32))
        } else {
            let id = usable[(r >> 8) as usize % usable.len()].clone();
            let changes = match (r >> 32) % 3 {
                0 => json!({ "name": format!("n{:x}", r >> 40) }),
                1 => json!({ "group": (r >> 20) % 1000 }),
                _ => json!({ "email": format!("e{}@example.com", (r >> 24) % 10_000) }),
            };
            Write::update(&id, changes)
        };
        report.writes += 1;
        match write_retried(&api, &write, &mut report.failures).await {
            Some(reply) => report.ledger.ack(&write.id, &reply),
            None => {
                frozen.insert(write.id.clone());
                report.unresolved.push(write);
            }
        }
    }
    report
}

/// Updates, deletes and re-creates the existing records `ids` in turn until `until`, each
/// write with an Idempotency-Key and one retry. A record whose write failed twice is left
/// alone from then on (its state is unknown).
pub async fn churn(api: Api, ids: Vec<String>, until: Instant) -> LoadReport {
    let mut report = LoadReport::default();
    let mut exists = vec![true; ids.len()];
    let mut frozen = vec![false; ids.len()];
    let mut n = 0u32;
    while Instant::now() < until && frozen.contains(&false) {
        n += 1;
        let k = n as usize % ids.len();
        if frozen[k] {
            continue;
        }
        let id = &ids[k];
        let write = if !exists[k] {
            Write::create(user(id, &format!("Re-created {n}"), n))
        } else if n % 7 == 3 {
            Write::delete(id)
        } else {
            Write::update(id, json!({ "group": n }))
        };
        report.writes += 1;
        match write_retried(&api, &write, &mut report.failures).await {
            Some(reply) => {
                exists[k] = reply.status != StatusCode::NO_CONTENT;
                report.ledger.ack(id, &reply);
            }
            None => {
                frozen[k] = true;
                report.unresolved.push(write);
            }
        }
    }
    report
}

/// Reads `id` through the gateway; unless it is exactly what the write acknowledged
/// (content and ETag), adds it to `stale`.
async fn check_fresh(api: &Api, id: &str, acked: &HttpReply, stale: &mut Vec<String>) {
    let read = api.get(id).await;
    let fresh = read.status == StatusCode::OK
        && read.json() == acked.json()
        && etag_of(&read.headers) == Some(acked.etag());
    if !fresh {
        stale.push(format!(
            "{id:?}: acknowledged version {} {}, read {} {:?} {}",
            acked.etag(),
            acked.text,
            read.status,
            etag_of(&read.headers),
            read.text
        ));
    }
}

/// For each id: create → read, then update → read, through one gateway; the stale reads.
/// Every acknowledged write goes into `ledger`.
pub async fn write_read_pairs(
    api: &Api,
    ids: &[String],
    tag: &str,
    ledger: &mut Ledger,
) -> Vec<String> {
    let mut stale = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let created = Write::create(user(id, tag, 1));
        let reply = created
            .send(api)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", created.describe()));
        created.check(&reply);
        check_fresh(api, id, &reply, &mut stale).await;
        let updated = Write::update(id, json!({ "name": format!("{tag} {i}"), "group": i }));
        let reply = updated
            .send(api)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", updated.describe()));
        updated.check(&reply);
        check_fresh(api, id, &reply, &mut stale).await;
        ledger.ack(id, &reply);
    }
    stale
}
