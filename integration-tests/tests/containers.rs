//! Container scenarios: the images `scripts/build-images` makes (or `docker-compose build` on a
//! host that can pull) — `ringstore/nats:2.15`, `ringstore/dbnode:latest`,
//! `ringstore/gateway:latest` — run by testcontainers on a private Docker network, NATS with
//! the image's `nats.conf` and fresh passwords. Each scenario deploys its own cluster (nats,
//! db-0..db-2, gateway) and talks to the gateway through its mapped port: CRUD, a dbnode
//! container stopped for 10 s and started again, a paused dbnode container, a restarted NATS
//! container, and on a 3-container NATS cluster with R3 logs the container leading a log
//! killed. Every acknowledged write must survive and the returning node must converge.
//!
//! Without the images every scenario passes after printing `skipped: images not built`, so
//! the suite runs on hosts without Docker; with `RINGSTORE_REQUIRE_IMAGES=1` (CI, after
//! `scripts/build-images`) a missing image fails instead.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::{eventually, expect, user_path, ApiKey, NatsAuth, NatsUser};
use protocol::partition::partition_of;
use protocol::{subjects, GetRequest, Op, Reply, Response, Role, User};
use reqwest::StatusCode;
use serde_json::{json, Value};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::time::Instant;

const NATS_IMAGE: (&str, &str) = ("ringstore/nats", "2.15");
const DBNODE_IMAGE: (&str, &str) = ("ringstore/dbnode", "latest");
const GATEWAY_IMAGE: (&str, &str) = ("ringstore/gateway", "latest");
const NODES: u32 = 3;
/// Log lines per container printed when a scenario fails.
const DUMP_LINES: &str = "40";

/// `None` when every image is there; else why not. Asks the `docker` CLI, so a host without
/// Docker skips too.
fn missing_images() -> Option<String> {
    for (name, tag) in [NATS_IMAGE, DBNODE_IMAGE, GATEWAY_IMAGE] {
        let image = format!("{name}:{tag}");
        match Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", &image])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                return Some(format!("{image}: {}", err.trim()));
            }
            Err(e) => return Some(format!("cannot run `docker image inspect {image}`: {e}")),
        }
    }
    None
}

/// A deployed cluster of containers, or `None` (after saying so) when the images are absent
/// and `RINGSTORE_REQUIRE_IMAGES` is not `1`.
async fn deploy_or_skip(scenario: &str) -> Option<Deployment> {
    deploy_on_or_skip(scenario, 1).await
}

/// As [`deploy_or_skip`], with `servers` NATS containers as one cluster (R3 logs when 3).
async fn deploy_on_or_skip(scenario: &str, servers: usize) -> Option<Deployment> {
    if let Some(why) = missing_images() {
        if std::env::var("RINGSTORE_REQUIRE_IMAGES").as_deref() == Ok("1") {
            panic!("RINGSTORE_REQUIRE_IMAGES=1 but {why}; run scripts/build-images");
        }
        eprintln!("skipped: images not built ({why}); run scripts/build-images ({scenario})");
        return None;
    }
    Some(Deployment::start(scenario, servers).await)
}

/// nats (one server, or nats-0..nats-2 as a cluster) + db-0..db-2 + gateway on one private
/// network, torn down on drop (printing the last lines of every container's log if the
/// scenario is failing).
struct Deployment {
    /// Unique per deployment: container names and the network are `{prefix}-…`.
    prefix: String,
    auth: NatsAuth,
    /// The NATS servers; on a cluster, server `i` is named `nats-{i}`.
    nats: Vec<ContainerAsync<GenericImage>>,
    nodes: Vec<ContainerAsync<GenericImage>>,
    gateway: ContainerAsync<GenericImage>,
    base: String,
    http: reqwest::Client,
}

/// A container of a ringstore image on `network`, logged in to NATS as `user`, with the
/// settings every ringstore process of the deployment shares.
fn ringstore_container(
    image: GenericImage,
    network: &str,
    name: &str,
    nats_url: &str,
    user: &NatsUser,
) -> testcontainers::ContainerRequest<GenericImage> {
    image
        .with_network(network)
        .with_container_name(name)
        .with_env_var("NATS_URL", nats_url)
        .with_env_var("NATS_USER", &user.user)
        .with_env_var("NATS_PASSWORD", &user.password)
        .with_env_var("PARTITIONS", NODES.to_string())
        .with_env_var("LOG_FORMAT", "pretty")
        .with_env_var("NO_COLOR", "1")
}

impl Deployment {
    async fn start(scenario: &str, servers: usize) -> Deployment {
        let prefix = format!("rs-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let network = format!("{prefix}-net");
        let auth = NatsAuth::random();
        let name_of = |i: usize| match servers {
            1 => format!("{prefix}-nats"),
            _ => format!("{prefix}-nats-{i}"),
        };
        let urls: Vec<String> = (0..servers)
            .map(|i| format!("nats://{}:4222", name_of(i)))
            .collect();
        let nats_url = urls.join(",");
        let replicas = servers.to_string();
        eprintln!("== deploy {scenario}: containers {prefix}-* on network {network}");

        let mut nats = Vec::new();
        for i in 0..servers {
            let mut server = GenericImage::new(NATS_IMAGE.0, NATS_IMAGE.1)
                .with_exposed_port(4222.tcp())
                .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
                .with_network(&network)
                .with_container_name(name_of(i));
            for (key, value) in auth.server_env() {
                server = server.with_env_var(key, value);
            }
            let server = if servers > 1 {
                let routes: Vec<String> = (0..servers)
                    .filter(|&j| j != i)
                    .map(|j| format!("nats://{}:6222", name_of(j)))
                    .collect();
                server.with_cmd([
                    "-n".to_owned(),
                    format!("nats-{i}"),
                    "--cluster_name".to_owned(),
                    "ringstore".to_owned(),
                    "--cluster".to_owned(),
                    "nats://0.0.0.0:6222".to_owned(),
                    "--routes".to_owned(),
                    routes.join(","),
                ])
            } else {
                server
            };
            nats.push(server.start().await.expect("a nats container starts"));
        }

        // The operator's step: the nodes may not create streams, `dbnode --provision` as
        // admin does (a one-shot container of the dbnode image).
        let provisioning = GenericImage::new(DBNODE_IMAGE.0, DBNODE_IMAGE.1).with_wait_for(
            WaitFor::message_on_either_std("idempotency-key bucket provisioned"),
        );
        let name = format!("{prefix}-provision");
        ringstore_container(provisioning, &network, &name, &nats_url, &auth.admin)
            .with_env_var("STREAM_REPLICAS", &replicas)
            .with_cmd(["--provision"])
            .start()
            .await
            .expect("dbnode --provision runs");

        let mut nodes = Vec::new();
        for i in 0..NODES {
            let name = format!("{prefix}-db-{i}");
            let image = GenericImage::new(DBNODE_IMAGE.0, DBNODE_IMAGE.1);
            let node = ringstore_container(image, &network, &name, &nats_url, auth.node(i))
                .with_env_var("DB_INSTANCE_ID", format!("db-{i}"))
                .with_env_var("STREAM_REPLICAS", &replicas)
                .with_env_var("RUST_LOG", "info,dbnode=debug");
            nodes.push(node.start().await.expect("a dbnode container starts"));
        }

        // REST authentication on, as in production: the keys file is copied in.
        let api_key = ApiKey::random("containers", "read,write,admin");
        let name = format!("{prefix}-gateway");
        let image =
            GenericImage::new(GATEWAY_IMAGE.0, GATEWAY_IMAGE.1).with_exposed_port(3001.tcp());
        let gateway = ringstore_container(image, &network, &name, &nats_url, &auth.gateway)
            .with_copy_to("/tmp/api-keys", api_key.line().into_bytes())
            .with_env_var("API_KEYS_FILE", "/tmp/api-keys")
            .with_env_var("REST_PORT", "3001")
            .with_env_var("REQUEST_TIMEOUT_MS", "2000")
            .start()
            .await
            .expect("the gateway container starts");
        let port = gateway
            .get_host_port_ipv4(3001.tcp())
            .await
            .expect("the gateway's port is mapped");
        let http = integration_tests::client(Some(&api_key.key));
        let deployment = Deployment {
            prefix,
            auth,
            nats,
            nodes,
            gateway,
            base: format!("http://127.0.0.1:{port}"),
            http,
        };
        let started = Instant::now();
        deployment.wait_converged(Duration::from_secs(60)).await;
        eprintln!(
            "== deployed: every node ready, gateway on {} ({:?} after the last container started)",
            deployment.base,
            started.elapsed()
        );
        deployment
    }

    /// Waits (30 s at most) until a create in every partition succeeds: one probe per
    /// partition, since each node re-subscribes on its own reconnect.
    async fn wait_writable(&self) {
        eventually(Duration::from_secs(30), || async {
            for p in 0..3 {
                let id = (0..)
                    .map(|_| format!("probe-{}", uuid::Uuid::new_v4().simple()))
                    .find(|id| partition_of(id, 3) == p)?;
                let response = self
                    .http
                    .post(self.url("/api/user"))
                    .json(&user(&id, 1))
                    .send()
                    .await
                    .ok()?;
                if response.status() != StatusCode::CREATED {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }

    fn node(&self, i: u32) -> &ContainerAsync<GenericImage> {
        &self.nodes[i as usize]
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET /api/cluster`, or `None` while the gateway does not answer it.
    async fn cluster_view(&self) -> Option<Value> {
        let response = self.http.get(self.url("/api/cluster")).send().await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        response.json().await.ok()
    }

    /// Waits until every node is live and `ready` in the gateway's view, and every partition's
    /// copies have applied the same sequence with lag 0: the cluster has converged.
    async fn wait_converged(&self, deadline: Duration) -> Value {
        eventually(deadline, || async {
            let view = self.cluster_view().await?;
            converged(&view).then_some(view)
        })
        .await
    }

    /// A NATS client on the mapped port, as the admin user.
    async fn nats_client(&self) -> async_nats::Client {
        let port = self.nats[0]
            .get_host_port_ipv4(4222.tcp())
            .await
            .expect("NATS's port is mapped");
        let connect = self
            .auth
            .admin
            .connect_options()
            .connection_timeout(Duration::from_secs(5))
            .connect(format!("nats://127.0.0.1:{port}"));
        tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .expect("connecting to NATS timed out")
            .expect("connect to NATS as admin")
    }

    /// Asserts that the copy of `partition` with `role` (asked directly over NATS) holds
    /// exactly `expected` for each of its records.
    async fn assert_copy_holds(&self, partition: u32, role: Role, expected: &[Value]) {
        let client = self.nats_client().await;
        let subject = subjects::request(partition, role, Op::Get);
        for record in expected {
            let user: User = serde_json::from_value(record.clone()).expect("a valid record");
            let payload = serde_json::to_vec(&GetRequest {
                id: user.id.clone(),
                min_seq: 0,
                epoch: 0,
                deadline: 0,
            })
            .expect("a get request serialises");
            let reply = eventually(Duration::from_secs(10), || async {
                let call = client.request(subject.clone(), payload.clone().into());
                let msg = tokio::time::timeout(Duration::from_secs(2), call)
                    .await
                    .ok()?
                    .ok()?;
                Some(msg.payload)
            })
            .await;
            let response: Response = serde_json::from_slice(&reply).expect("an answer");
            match response.answer {
                Ok(Reply::User(found)) => assert_eq!(found.user, user, "{subject}"),
                other => panic!("{subject} for {:?}: {other:?}", user.id),
            }
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut containers = vec![("gateway".to_owned(), self.gateway.id().to_owned())];
        for (i, nats) in self.nats.iter().enumerate() {
            containers.push((format!("nats-{i}"), nats.id().to_owned()));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            containers.push((format!("db-{i}"), node.id().to_owned()));
        }
        for (name, id) in containers {
            eprintln!(
                "---------- last {DUMP_LINES} lines of {}-{name} ----------",
                self.prefix
            );
            match Command::new("docker")
                .args(["logs", "--tail", DUMP_LINES, &id])
                .output()
            {
                Ok(out) => {
                    eprint!("{}", String::from_utf8_lossy(&out.stdout));
                    eprint!("{}", String::from_utf8_lossy(&out.stderr));
                }
                Err(e) => eprintln!("(docker logs failed: {e})"),
            }
        }
    }
}

/// Every node live and ready; for every partition, all copies at the same applied sequence
/// with lag 0.
fn converged(view: &Value) -> bool {
    let Some(nodes) = view["nodes"].as_array() else {
        return false;
    };
    if nodes.len() != NODES as usize {
        return false;
    }
    let mut applied: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for node in nodes {
        if node["live"] != json!(true) || node["state"] != json!("ready") {
            return false;
        }
        for copy in node["partitions"].as_array().into_iter().flatten() {
            if copy["lag"] != json!(0) {
                return false;
            }
            let (Some(p), Some(seq)) = (copy["partition"].as_u64(), copy["applied"].as_u64())
            else {
                return false;
            };
            applied.entry(p).or_default().push(seq);
        }
    }
    applied.len() == NODES as usize
        && applied
            .values()
            .all(|seqs| seqs.len() == 2 && seqs[0] == seqs[1])
}

fn user(id: &str, group: u32) -> Value {
    json!({ "id": id, "name": format!("User {id}"), "email": "someone@example.com", "group": group })
}

/// What a writer saw: the state of every record it wrote, as acknowledged, and every
/// request that did not succeed.
#[derive(Default)]
struct Outcome {
    acked: BTreeMap<String, Value>,
    failures: Vec<String>,
    requests: usize,
}

/// Writes until `stop` is set: creates new records and, every third request, moves an earlier
/// one to another group (a partial update), in every partition. Every request must succeed.
async fn write_until(
    http: reqwest::Client,
    base: String,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        // Every third request moves the record created two requests earlier.
        let earlier = format!("{prefix}-{:04}", i.wrapping_sub(2));
        let (request, record) = if i % 3 == 2 && outcome.acked.contains_key(&earlier) {
            let patch = json!({ "id": earlier, "group": i % 7 + 10 });
            let moved = user(&earlier, i % 7 + 10);
            (http.put(format!("{base}/api/user")).json(&patch), moved)
        } else {
            let record = user(&format!("{prefix}-{i:04}"), i % 5);
            (http.post(format!("{base}/api/user")).json(&record), record)
        };
        let id = record["id"].as_str().unwrap_or_default().to_owned();
        outcome.requests += 1;
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                outcome.acked.insert(id, record);
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                outcome.failures.push(format!("{id}: {status} {body}"));
            }
            Err(e) => outcome.failures.push(format!("{id}: {e}")),
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    outcome
}

/// A background writer against the gateway.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl Writer {
    fn start(deployment: &Deployment, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(write_until(
            deployment.http.clone(),
            deployment.base.clone(),
            prefix.to_owned(),
            stop.clone(),
        ));
        Writer { stop, task }
    }

    async fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the writer task does not panic")
    }
}

/// Every acknowledged record reads back through the gateway as acknowledged.
async fn assert_all_readable(deployment: &Deployment, acked: &BTreeMap<String, Value>) {
    for (id, record) in acked {
        let response = deployment
            .http
            .get(deployment.url(&user_path(id)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {id}: {e}"));
        assert_eq!(expect(response, 200).await.json(), *record, "record {id}");
    }
}

/// Records of `acked` that live in `partition`.
fn in_partition(acked: &BTreeMap<String, Value>, partition: u32) -> Vec<Value> {
    acked
        .iter()
        .filter(|(id, _)| partition_of(id, NODES) == partition)
        .map(|(_, record)| record.clone())
        .collect()
}

/// The drill's end: the cluster converged, every acknowledged record is readable, and db-1's
/// own copies (primary of P1, replica of P0), asked directly, hold every one of theirs.
async fn assert_db1_caught_up(deployment: &Deployment, acked: &BTreeMap<String, Value>) {
    eprintln!("== phase: the cluster converges (db-1 lag 0, applied == its peers')");
    let started = Instant::now();
    deployment.wait_converged(Duration::from_secs(60)).await;
    eprintln!(
        "== measured: converged {:?} after the writes stopped",
        started.elapsed()
    );
    eprintln!(
        "== phase: every acknowledged write reads back ({} records)",
        acked.len()
    );
    assert_all_readable(deployment, acked).await;
    eprintln!("== phase: db-1's primary copy of P1 and replica copy of P0 hold them");
    deployment
        .assert_copy_holds(1, Role::Primary, &in_partition(acked, 1))
        .await;
    deployment
        .assert_copy_holds(0, Role::Replica, &in_partition(acked, 0))
        .await;
}

#[tokio::test]
async fn crud_through_the_gateway_container() {
    let Some(deployment) = deploy_or_skip("crud").await else {
        return;
    };
    let http = &deployment.http;

    eprintln!("== phase: create, read, update, delete through the mapped port");
    let john = user("13AE742", 3);
    let created = http
        .post(deployment.url("/api/user"))
        .json(&john)
        .send()
        .await
        .expect("POST");
    assert_eq!(expect(created, 201).await.json(), john);
    let got = http.get(deployment.url("/api/user/13AE742")).send().await;
    assert_eq!(expect(got.expect("GET"), 200).await.json(), john);
    let patch = json!({ "id": "13AE742", "group": 4 });
    let updated = http
        .put(deployment.url("/api/user"))
        .json(&patch)
        .send()
        .await;
    assert_eq!(expect(updated.expect("PUT"), 200).await.json()["group"], 4);
    let conflict = http
        .post(deployment.url("/api/user"))
        .json(&john)
        .send()
        .await;
    expect(conflict.expect("POST again"), 409).await;

    eprintln!("== phase: list and count across the three partitions");
    for i in 0..12 {
        let response = http
            .post(deployment.url("/api/user"))
            .json(&user(&format!("u{i:02}"), 1))
            .send()
            .await;
        expect(response.expect("POST"), 201).await;
    }
    let count = http.get(deployment.url("/api/users/count")).send().await;
    assert_eq!(expect(count.expect("COUNT"), 200).await.json()["count"], 13);
    let page = http
        .get(deployment.url("/api/users?group=1&limit=5"))
        .send()
        .await;
    let page = expect(page.expect("LIST"), 200).await.json();
    let ids: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    assert_eq!(ids, ["u00", "u01", "u02", "u03", "u04"]);

    eprintln!("== phase: delete");
    let deleted = http
        .delete(deployment.url("/api/user/13AE742"))
        .send()
        .await;
    expect(deleted.expect("DELETE"), 204).await;
    let gone = http.get(deployment.url("/api/user/13AE742")).send().await;
    expect(gone.expect("GET"), 404).await;
    let health = http.get(deployment.url("/health")).send().await;
    assert_eq!(expect(health.expect("health"), 200).await.text, "ok");
}

/// The end of a fault story: every request succeeded, and db-1 holds every acknowledged write.
async fn assert_nothing_failed_and_db1_caught_up(
    deployment: &Deployment,
    outcome: &Outcome,
    when: &str,
) {
    eprintln!(
        "== measured: {} requests, {} acknowledged records, {} failed",
        outcome.requests,
        outcome.acked.len(),
        outcome.failures.len()
    );
    assert!(
        outcome.failures.is_empty(),
        "requests failed {when}: {:?}",
        outcome.failures
    );
    assert_db1_caught_up(deployment, &outcome.acked).await;
}

#[tokio::test]
async fn a_stopped_dbnode_container_loses_nothing_and_catches_up() {
    let Some(deployment) = deploy_or_skip("stop/start drill").await else {
        return;
    };

    eprintln!("== phase: write for 2 s, then `docker stop` db-1 while writing");
    let writer = Writer::start(&deployment, "stop");
    tokio::time::sleep(Duration::from_secs(2)).await;
    deployment.node(1).stop().await.expect("docker stop db-1");
    eprintln!("== phase: db-1 stopped; writing for 10 s");
    tokio::time::sleep(Duration::from_secs(10)).await;
    eprintln!("== phase: `docker start` db-1; keep writing for 3 s");
    deployment.node(1).start().await.expect("docker start db-1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome = writer.finish().await;
    assert_nothing_failed_and_db1_caught_up(&deployment, &outcome, "during the drill").await;
}

#[tokio::test]
async fn a_paused_dbnode_container_is_routed_around_and_catches_up() {
    let Some(deployment) = deploy_or_skip("pause").await else {
        return;
    };

    eprintln!("== phase: write for 2 s, then `docker pause` db-1 for 8 s while writing");
    let writer = Writer::start(&deployment, "pause");
    tokio::time::sleep(Duration::from_secs(2)).await;
    deployment.node(1).pause().await.expect("docker pause db-1");
    tokio::time::sleep(Duration::from_secs(8)).await;
    eprintln!("== phase: `docker unpause` db-1; keep writing for 3 s");
    deployment
        .node(1)
        .unpause()
        .await
        .expect("docker unpause db-1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome = writer.finish().await;
    assert_nothing_failed_and_db1_caught_up(&deployment, &outcome, "while db-1 was paused").await;
}

#[tokio::test]
async fn a_restarted_nats_container_loses_no_acknowledged_write() {
    let Some(deployment) = deploy_or_skip("NATS restart").await else {
        return;
    };

    eprintln!("== phase: write for 3 s");
    let before = Writer::start(&deployment, "before").finish_after(3).await;
    assert!(before.failures.is_empty(), "{:?}", before.failures);

    eprintln!("== phase: `docker stop` + `docker start` the NATS container");
    deployment.nats[0].stop().await.expect("docker stop nats");
    deployment.nats[0].start().await.expect("docker start nats");

    eprintln!("== phase: writes to every partition succeed again, no other container restarted");
    let started = Instant::now();
    deployment.wait_writable().await;
    eprintln!(
        "== measured: writes succeed {:?} after NATS started",
        started.elapsed()
    );
    let after = Writer::start(&deployment, "after").finish_after(3).await;
    assert!(after.failures.is_empty(), "{:?}", after.failures);

    let mut acked = before.acked;
    acked.extend(after.acked);
    eprintln!("== phase: the cluster converges; every acknowledged write is there");
    deployment.wait_converged(Duration::from_secs(60)).await;
    assert_all_readable(&deployment, &acked).await;
}

#[tokio::test]
async fn a_killed_nats_container_of_a_cluster_loses_no_acknowledged_write() {
    let Some(deployment) = deploy_on_or_skip("NATS cluster", 3).await else {
        return;
    };
    let view = deployment.wait_converged(Duration::from_secs(60)).await;
    let leader = view["partitions"][0]["log"]["leader"]
        .as_str()
        .and_then(|name| name.strip_prefix("nats-"))
        .and_then(|i| i.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no leader of P0's log in {view}"));

    eprintln!("== phase: keyed creates while `docker kill` takes nats-{leader}, P0's log leader");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(create_until(
        deployment.http.clone(),
        deployment.base.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await; // writes before the kill
    let killed = Instant::now();
    let status = Command::new("docker")
        .args(["kill", deployment.nats[leader].id()])
        .status()
        .expect("docker kill runs");
    assert!(status.success(), "docker kill nats-{leader}");
    // Writes of every partition succeed again, on the two servers left.
    deployment.wait_writable().await;
    eprintln!(
        "== measured: writes to every partition succeed {:?} after the kill",
        killed.elapsed()
    );
    deployment.nats[leader]
        .start()
        .await
        .expect("docker start the killed server");
    tokio::time::sleep(Duration::from_secs(2)).await; // writes after its return
    stop.store(true, Ordering::Relaxed);
    let (acked, unknown) = writer.await.expect("the writer does not panic");
    eprintln!(
        "== phase: {} creates acknowledged, {unknown} not; the cluster converges; every \
         acknowledged one is there",
        acked.len()
    );
    assert!(acked.len() > 20, "too few writes to mean anything");
    deployment.wait_converged(Duration::from_secs(60)).await;
    assert_all_readable(&deployment, &acked).await;
}

/// Creates new records, each with its own Idempotency-Key, until `stop`; returns the
/// acknowledged ones and how many got no acknowledgement (unknown: applied or not).
async fn create_until(
    http: reqwest::Client,
    base: String,
    stop: Arc<AtomicBool>,
) -> (BTreeMap<String, Value>, usize) {
    let (mut acked, mut unknown) = (BTreeMap::new(), 0);
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let record = user(&format!("c-{i:05}"), 2);
        let answer = http
            .post(format!("{base}/api/user"))
            .header("Idempotency-Key", format!("c-{i}"))
            .json(&record)
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == StatusCode::CREATED => {
                acked.insert(record["id"].as_str().unwrap_or_default().to_owned(), record);
            }
            _ => {
                unknown += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    (acked, unknown)
}

impl Writer {
    /// Writes for `seconds`, then stops and returns what it saw.
    async fn finish_after(self, seconds: u64) -> Outcome {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        self.finish().await
    }
}
