//! The repository's `nats.conf` under test: no anonymous client, each role allowed what the
//! cluster needs (the rest of the suite runs every scenario under these permissions) and
//! refused what it does not, and the NATS service API (`$SRV.PING`) answered by every dbnode.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use integration_tests::{expect, Cluster, Nats, NatsAuth, NatsUser};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// A client logged in as one user, with the server's error messages (permission violations)
/// collected.
struct Watched {
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

async fn connect_as(cluster: &Cluster, user: &NatsUser) -> Watched {
    let (tx, errors) = mpsc::unbounded_channel();
    let client = user
        .connect_options()
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(cluster.nats_url())
        .await
        .unwrap_or_else(|e| panic!("{} cannot log in: {e}", user.user));
    Watched { client, errors }
}

impl Watched {
    /// Runs `attempt` and asserts that the server answers it with a permissions violation
    /// (within 3 s).
    async fn refused<F: std::future::Future<Output = ()>>(&mut self, what: &str, attempt: F) {
        while self.errors.try_recv().is_ok() {}
        attempt.await;
        let _ = self.client.flush().await;
        let deadline = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => panic!("{what}: the server did not refuse it"),
                Some(error) = self.errors.recv() => {
                    if error.to_lowercase().contains("permissions violation") {
                        eprintln!("   refused as expected: {what} ({error})");
                        return;
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn nats_refuses_clients_without_the_right_password() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let auth = NatsAuth::random();
    let nats =
        Nats::start_with_config(dir.path(), &dir.path().join("nats.log"), auth.clone()).await;
    let connect = |options: async_nats::ConnectOptions| async {
        let attempt = options
            .connection_timeout(Duration::from_secs(3))
            .connect(nats.url());
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .expect("an answer within 10 s")
    };

    eprintln!("== phase: no credentials, a wrong password, an unknown user: refused");
    assert!(connect(async_nats::ConnectOptions::new()).await.is_err());
    let wrong = NatsUser {
        user: "db-0".into(),
        password: "db-0-local".into(),
    };
    assert!(connect(wrong.connect_options()).await.is_err());
    let stranger = NatsUser {
        user: "nobody".into(),
        password: auth.admin.password.clone(),
    };
    assert!(connect(stranger.connect_options()).await.is_err());

    eprintln!("== phase: one node's password is not another's");
    let borrowed = NatsUser {
        user: "db-1".into(),
        password: auth.node(0).password.clone(),
    };
    assert!(connect(borrowed.connect_options()).await.is_err());

    eprintln!("== phase: each identity with its password: accepted");
    for user in [
        &auth.gateway,
        auth.node(0),
        auth.node(1),
        auth.node(2),
        &auth.admin,
    ] {
        let client = connect(user.connect_options()).await;
        assert!(client.is_ok(), "{}: {:?}", user.user, client.err());
    }
}

#[tokio::test]
async fn every_dbnode_answers_srv_ping_and_each_role_is_held_to_its_subjects() {
    let cluster = Cluster::start(3).await;
    let auth = cluster
        .nats_auth()
        .expect("the cluster runs nats.conf")
        .clone();
    let record = json!({ "id": "a1", "name": "Ann", "email": "ann@example.com", "group": 1 });
    expect(cluster.create(&record).await, 201).await;

    eprintln!("== phase: $SRV.PING as the gateway: every dbnode answers");
    let mut gateway = connect_as(&cluster, &auth.gateway).await;
    let inbox = gateway.client.new_inbox();
    let mut replies = gateway
        .client
        .subscribe(inbox.clone())
        .await
        .expect("subscribe");
    gateway
        .client
        .publish_with_reply("$SRV.PING", inbox, "".into())
        .await
        .expect("publish $SRV.PING");
    let mut services = BTreeSet::new();
    while services.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(5), replies.next()).await;
        let Ok(Some(msg)) = next else {
            panic!(
                "$SRV.PING: only {} dbnodes answered: {services:?}",
                services.len()
            );
        };
        let ping: Value = serde_json::from_slice(&msg.payload).expect("a JSON ping response");
        assert_eq!(ping["name"], "ringstore-dbnode", "{ping}");
        services.insert(ping["id"].as_str().unwrap_or_default().to_owned());
    }

    eprintln!("== phase: the gateway may read the logs, not write, purge or change them");
    let client = gateway.client.clone();
    gateway
        .refused("gateway publishes to ringstore.log.0.6131", async {
            let _ = client.publish("ringstore.log.0.6131", "{}".into()).await;
        })
        .await;
    gateway
        .refused("gateway purges RINGSTORE_P0", async {
            let purge = client.request("$JS.API.STREAM.PURGE.RINGSTORE_P0", "".into());
            let _ = tokio::time::timeout(Duration::from_millis(500), purge).await;
        })
        .await;
    gateway
        .refused("gateway deletes an entry of RINGSTORE_P1", async {
            let delete = client.request(
                "$JS.API.STREAM.MSG.DELETE.RINGSTORE_P1",
                r#"{"seq":1}"#.into(),
            );
            let _ = tokio::time::timeout(Duration::from_millis(500), delete).await;
        })
        .await;
    gateway
        .refused("gateway updates RINGSTORE_P2", async {
            let update = client.request("$JS.API.STREAM.UPDATE.RINGSTORE_P2", "{}".into());
            let _ = tokio::time::timeout(Duration::from_millis(500), update).await;
        })
        .await;
    gateway
        .refused("gateway subscribes ringstore.part.>", async {
            let _ = client.subscribe("ringstore.part.>").await;
        })
        .await;

    gateway
        .refused("gateway reads a dbnode's replies (_INBOX.db-1.>)", async {
            let _ = client.subscribe("_INBOX.db-1.>").await;
        })
        .await;
    gateway
        .refused("gateway reads every reply (_INBOX.>)", async {
            let _ = client.subscribe("_INBOX.>").await;
        })
        .await;

    eprintln!("== phase: db-1 (P1 primary, P0 replica) is held to its own partitions and logs");
    let mut db1 = connect_as(&cluster, auth.node(1)).await;
    let client = db1.client.clone();
    let request = |subject: &'static str, body: &'static str| {
        let client = client.clone();
        async move {
            let call = client.request(subject, body.into());
            let _ = tokio::time::timeout(Duration::from_millis(500), call).await;
        }
    };
    // Each of these was an attack with the shared `dbnode` login of the previous nats.conf.
    let shrink = r#"{"name":"RINGSTORE_P1","subjects":["ringstore.log.1.>"],"max_msgs":1}"#;
    db1.refused(
        "db-1 shrinks its own log (STREAM.UPDATE)",
        request("$JS.API.STREAM.UPDATE.RINGSTORE_P1", shrink),
    )
    .await;
    let seal = r#"{"name":"RINGSTORE_P0","subjects":["ringstore.log.0.>"],"sealed":true}"#;
    db1.refused(
        "db-1 seals P0's log",
        request("$JS.API.STREAM.UPDATE.RINGSTORE_P0", seal),
    )
    .await;
    let hijack = r#"{"name":"HIJACK","subjects":["ringstore.part.>"]}"#;
    db1.refused(
        "db-1 creates a stream on request subjects",
        request("$JS.API.STREAM.CREATE.HIJACK", hijack),
    )
    .await;
    db1.refused(
        "db-1 deletes stream RINGSTORE_P0",
        request("$JS.API.STREAM.DELETE.RINGSTORE_P0", ""),
    )
    .await;
    db1.refused(
        "db-1 purges stream RINGSTORE_P1",
        request("$JS.API.STREAM.PURGE.RINGSTORE_P1", ""),
    )
    .await;
    db1.refused("db-1 writes P2's log", async {
        let _ = client.publish("ringstore.log.2.6131", "{}".into()).await;
    })
    .await;
    db1.refused("db-1 serves P2's requests", async {
        let _ = client.subscribe("ringstore.part.2.primary.>").await;
    })
    .await;
    db1.refused("db-1 publishes db-0's presence", async {
        let _ = client.publish("ringstore.presence.db-0", "{}".into()).await;
    })
    .await;
    db1.refused("db-1 answers db-0's pings", async {
        let _ = client.subscribe("ringstore.node.db-0").await;
    })
    .await;
    db1.refused("db-1 reads the gateway's replies", async {
        let _ = client.subscribe("_INBOX.gateway.>").await;
    })
    .await;
    db1.refused("db-1 publishes into someone's inbox", async {
        let _ = client.publish("_INBOX.gateway.x", "{}".into()).await;
    })
    .await;

    eprintln!("== phase: nothing was harmed: the logs exist and the record reads back");
    let js = async_nats::jetstream::new(cluster.nats_client().await);
    for p in 0..3 {
        let mut stream = js
            .get_stream(format!("RINGSTORE_P{p}"))
            .await
            .unwrap_or_else(|e| panic!("stream RINGSTORE_P{p}: {e}"));
        let info = stream.info().await.expect("stream info");
        assert_eq!(info.config.max_messages, -1, "P{p} not shrunk");
        assert!(!info.config.sealed, "P{p} not sealed");
    }
    assert!(
        js.get_stream("HIJACK").await.is_err(),
        "no stream was created"
    );
    assert_eq!(expect(cluster.get("a1").await, 200).await.json(), record);
}
