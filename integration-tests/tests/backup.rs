//! `ringstore backup` and `restore` against real processes: a backup made while writes go on
//! restores into a fresh deployment with proof (every partition's log and both copies equal
//! the manifest), every record acknowledged before the backup began is there; a damaged file
//! and a deployment that holds data are refused before anything is written.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use integration_tests::Cluster;
use serde_json::{json, Value};

fn user(id: &str, name: &str) -> Value {
    json!({ "id": id, "name": name, "email": "backup@example.com", "group": 5 })
}

async fn three_over_twelve() -> Cluster {
    Cluster::builder().nodes(3).partitions(12).start().await
}

async fn record(cluster: &Cluster, id: &str) -> Option<Value> {
    let response = cluster.get(id).await;
    match response.status().as_u16() {
        200 => Some(response.json().await.expect("JSON")),
        404 => None,
        other => panic!("GET {id}: {other}"),
    }
}

#[tokio::test]
async fn a_backup_made_under_writes_restores_into_a_fresh_deployment_with_proof() {
    let source = three_over_twelve().await;
    let ids: Vec<String> = (0..120).map(|i| format!("b-{i:03}")).collect();
    for id in &ids {
        assert_eq!(source.create(&user(id, "before")).await.status(), 201);
    }
    assert_eq!(source.delete("b-000").await.status(), 204);
    // Outside the source's directory, which goes with it.
    let keep = tempfile::tempdir().expect("a temp dir");
    let file = keep.path().join("backup.jsonl");
    let file_arg = file.display().to_string();

    // Twenty records are updated, round after round, while the backup reads the logs.
    let (stop, rounds) = (AtomicBool::new(false), AtomicU32::new(0));
    let first_round = tokio::sync::Notify::new();
    let churned = &ids[100..];
    let writes = async {
        while !stop.load(Ordering::Relaxed) {
            let name = format!("during-{}", rounds.load(Ordering::Relaxed));
            for id in churned {
                let status = source.put_id(id, &json!({ "name": name })).await.status();
                assert_eq!(status, 200);
            }
            rounds.fetch_add(1, Ordering::Relaxed);
            first_round.notify_one();
        }
    };
    let backup = async {
        first_round.notified().await;
        let out = source.ringstore(&["backup", &file_arg]).await;
        stop.store(true, Ordering::Relaxed);
        (out, rounds.load(Ordering::Relaxed))
    };
    let ((), (out, rounds_by_then)) = tokio::join!(writes, backup);
    eprintln!("== the backup ran while round {rounds_by_then} of updates was going on");
    assert_eq!(out.status.code(), Some(0), "backup");
    let text = std::fs::read_to_string(&file).expect("the backup file");
    let manifest: Value =
        serde_json::from_str(text.lines().last().expect("lines")).expect("a JSON manifest");
    assert_eq!(manifest["kind"], json!("manifest"));
    let partitions = manifest["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 12);
    let records: u64 = partitions
        .iter()
        .map(|p| p["records"].as_u64().unwrap())
        .sum();
    assert_eq!(records, 119, "every live record, the deleted one not");

    let mut acknowledged: BTreeMap<String, Value> = BTreeMap::new();
    for id in &ids {
        if let Some(r) = record(&source, id).await {
            acknowledged.insert(id.clone(), r);
        }
    }
    drop(source);

    let target = three_over_twelve().await;
    let restored = target.ringstore(&["restore", &file_arg]).await;
    assert_eq!(restored.status.code(), Some(0), "the restore proves itself");
    let table = String::from_utf8_lossy(&restored.stdout).into_owned();
    assert_eq!(table.matches("proved").count(), 12, "{table}");

    assert_eq!(
        record(&target, "b-000").await,
        None,
        "a deleted record stays deleted"
    );
    for (id, before) in &acknowledged {
        let after = record(&target, id)
            .await
            .unwrap_or_else(|| panic!("{id} lost"));
        if churned.contains(id) {
            let name = after["name"].as_str().unwrap_or_default();
            assert!(
                name.starts_with("during-") || name == "before",
                "{id}: {after}"
            );
        } else {
            assert_eq!(&after, before, "{id}");
        }
    }
    let verified = target.ringstore(&["verify"]).await;
    assert_eq!(
        verified.status.code(),
        Some(0),
        "the restored copies equal their logs"
    );

    let again = target.ringstore(&["restore", &file_arg]).await;
    assert_eq!(
        again.status.code(),
        Some(1),
        "a deployment that holds data is refused"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("fresh deployment"));
}

#[tokio::test]
async fn a_damaged_backup_is_refused_before_anything_is_written() {
    let source = three_over_twelve().await;
    for i in 0..30 {
        assert_eq!(
            source.create(&user(&format!("d-{i}"), "x")).await.status(),
            201
        );
    }
    let file = source.dir().join("backup.jsonl");
    let file_arg = file.display().to_string();
    assert_eq!(
        source.ringstore(&["backup", &file_arg]).await.status.code(),
        Some(0)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let damaged = text.replacen("\"x\"", "\"y\"", 1);
    assert_ne!(damaged, text);
    let damaged_file = source.dir().join("damaged.jsonl");
    std::fs::write(&damaged_file, damaged).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let truncated_file = source.dir().join("truncated.jsonl");
    std::fs::write(&truncated_file, lines[..lines.len() - 1].join("\n")).unwrap();

    let target = three_over_twelve().await;
    for (file, why) in [(&damaged_file, "checksum"), (&truncated_file, "incomplete")] {
        let out = target
            .ringstore(&["restore", &file.display().to_string()])
            .await;
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(why), "{why}");
    }
    let count = target
        .request(reqwest::Method::GET, "/api/users/count")
        .send()
        .await
        .unwrap();
    let count: Value = count.json().await.unwrap();
    assert_eq!(count["count"], json!(0), "nothing was written");
}
