//! The suite's logic against a test double of the API server: no cluster
//! can run on the project's machines. The double (`FakeApiServer`, on
//! tower-test's mock service, as kube-rs documents) answers each request
//! with a test's routing function and records every request, so that the
//! tests check what the suite asks (apply patches, selectors, proxy paths)
//! and what it makes of the answers (a stuck rollout, a crash loop).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use super::objects::FIELD_MANAGER;
use super::*;
use crate::cluster::Expect;

/// One request as the API server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

/// What a test answers: a status and a JSON (or text) body.
enum Answer {
    Json(Value),
    Text(String),
    Status(StatusCode),
}

/// The API server test double.
struct FakeApiServer {
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl FakeApiServer {
    fn start(route: impl Fn(&Seen) -> Answer + Send + 'static) -> (Client, Self) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let request = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                let answer = route(&request);
                record.lock().unwrap().push(request.clone());
                let response = match answer {
                    Answer::Json(value) => {
                        Response::new(Body::from(value.to_string().into_bytes()))
                    }
                    Answer::Text(text) => Response::new(Body::from(text.into_bytes())),
                    Answer::Status(code) => {
                        // The API server's reason words, which kube matches on.
                        let reason = match code {
                            StatusCode::NOT_FOUND => "NotFound",
                            StatusCode::CONFLICT => "AlreadyExists",
                            _ => "InternalError",
                        };
                        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "reason": reason,
                            "message": "from the test double", "code": code.as_u16()});
                        Response::builder()
                            .status(code)
                            .body(Body::from(status.to_string().into_bytes()))
                            .unwrap()
                    }
                };
                respond.send_response(response);
            }
        });
        let client = Client::new(service, "default");
        (client, FakeApiServer { seen, _task: task })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A test double of `--node-shell`: every node's hosts.toml is `hosts`,
/// and every script is recorded.
struct FakeShell {
    hosts: String,
    scripts: Mutex<Vec<(String, String)>>,
}

impl FakeShell {
    fn new(hosts: &str) -> Arc<Self> {
        Arc::new(FakeShell {
            hosts: hosts.to_owned(),
            scripts: Mutex::new(Vec::new()),
        })
    }

    fn scripts(&self) -> Vec<(String, String)> {
        self.scripts.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl NodeShell for FakeShell {
    async fn run(&self, node: &str, script: &str) -> anyhow::Result<String> {
        self.scripts
            .lock()
            .unwrap()
            .push((node.to_owned(), script.to_owned()));
        Ok(if script.contains("cat '") {
            self.hosts.clone()
        } else {
            String::new()
        })
    }
}

const AGENT_HOSTS_TOML: &str =
    "[host.\"http://10.0.0.1:5000\"]\ncapabilities = [\"pull\", \"resolve\"]\n";

fn options() -> SuiteOptions {
    SuiteOptions {
        kubeconfig: None,
        context: None,
        image: "registry.example/reflektor:test".to_owned(),
        containerd: reflektor::manifests::ContainerdPaths::standard(),
        registry: None,
        node_shell: None,
        namespace: "reflektor-e2e-test".to_owned(),
        deadline: Duration::ZERO,
        poll: Duration::from_millis(1),
    }
}

fn suite(client: Client, nodes: &[&str]) -> Suite {
    let mut suite = Suite::new(client, options(), "test".to_owned());
    suite.rows = nodes
        .iter()
        .map(|node| Row::new("test", node, "kubelet v1.33.1", Expect::Supported))
        .collect();
    suite
}

fn daemonset(desired: i32, ready: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "reflektor", "namespace": "reflektor-e2e-test", "generation": 1},
        "status": {"desiredNumberScheduled": desired, "numberReady": ready,
            "updatedNumberScheduled": desired, "observedGeneration": 1,
            "currentNumberScheduled": desired, "numberMisscheduled": 0}})
}

fn pod(name: &str, node: &str, ready: bool, statuses: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "reflektor-e2e-test"},
        "spec": {"nodeName": node, "containers": [{"name": "registry"}]},
        "status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": statuses}})
}

fn pod_list(pods: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})
}

fn daemonset_list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSetList", "metadata": {}, "items": items})
}

#[tokio::test]
async fn install_applies_every_generated_object_with_server_side_apply() {
    let (client, server) = FakeApiServer::start(|request| match request.method.as_str() {
        // No reflektor or Spegel elsewhere on the cluster.
        "GET" if request.path == "/apis/apps/v1/daemonsets" => {
            Answer::Json(daemonset_list(Vec::new()))
        }
        // The API server answers a create or an apply with the object.
        "POST" | "PATCH" => Answer::Json(request.body.clone()),
        "GET" if request.path.ends_with("/daemonsets/reflektor") => Answer::Json(daemonset(1, 1)),
        "GET" if request.path.ends_with("/pods") => Answer::Json(pod_list(vec![pod(
            "reflektor-a",
            "node-a",
            true,
            json!([]),
        )])),
        _ => Answer::Status(StatusCode::NOT_IMPLEMENTED),
    });
    let mut suite = suite(client, &["node-a"]);
    suite.install().await.unwrap();

    let seen = server.seen();
    let created: Vec<&Seen> = seen.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(created.len(), 1, "the namespace is created, not applied");
    assert_eq!(created[0].path, "/api/v1/namespaces");
    assert!(suite.created_namespace);
    let patches: Vec<&Seen> = seen.iter().filter(|r| r.method == "PATCH").collect();
    let objects: Vec<_> = install_objects(&suite.manifests)
        .into_iter()
        .filter(|o| o.kind() != "Namespace")
        .collect();
    assert_eq!(patches.len(), objects.len(), "one apply per other object");
    for (object, patch) in objects.iter().zip(&patches) {
        assert_eq!(patch.content_type, "application/apply-patch+yaml");
        assert!(
            patch
                .query
                .contains(&format!("fieldManager={FIELD_MANAGER}"))
                && patch.query.contains("force=true"),
            "{} {}?{}",
            object.kind(),
            patch.path,
            patch.query
        );
        assert_eq!(patch.body["kind"], object.kind(), "{}", patch.path);
        assert!(
            patch
                .path
                .starts_with("/api/v1/namespaces/reflektor-e2e-test/")
                || patch
                    .path
                    .starts_with("/apis/apps/v1/namespaces/reflektor-e2e-test/"),
            "{}",
            patch.path
        );
    }
    let listed = seen.iter().find(|r| r.path.ends_with("/pods")).unwrap();
    assert!(
        listed
            .query
            .contains("labelSelector=app.kubernetes.io%2Fcomponent%3Dagent"),
        "{}",
        listed.query
    );
    assert!(matches!(
        suite.rows[0].cells.get(&KubeCheck::Installed),
        Some(Cell::Pass { .. })
    ));
}

#[tokio::test]
async fn an_existing_namespace_is_left_alone() {
    let (client, server) = FakeApiServer::start(|request| match request.method.as_str() {
        "GET" if request.path == "/apis/apps/v1/daemonsets" => {
            Answer::Json(daemonset_list(Vec::new()))
        }
        "POST" if request.path == "/api/v1/namespaces" => Answer::Status(StatusCode::CONFLICT),
        _ => Answer::Status(StatusCode::NOT_IMPLEMENTED),
    });
    let mut suite = suite(client, &["node-a"]);
    let error = suite.install().await.unwrap_err();
    assert!(format!("{error:#}").contains("already exists"), "{error:#}");
    suite.uninstall().await.unwrap();
    assert!(
        server
            .seen()
            .iter()
            .all(|r| r.method == "GET" || r.path == "/api/v1/namespaces"),
        "nothing applied, nothing deleted: {:?}",
        server.seen()
    );
}

#[tokio::test]
async fn another_install_on_the_cluster_is_left_alone() {
    let (client, server) = FakeApiServer::start(|request| {
        if request.path == "/apis/apps/v1/daemonsets" && request.query.contains("spegel") {
            return Answer::Json(daemonset_list(vec![json!({"apiVersion": "apps/v1",
                "kind": "DaemonSet", "metadata": {"name": "spegel", "namespace": "spegel"}})]));
        }
        if request.path == "/apis/apps/v1/daemonsets" {
            return Answer::Json(daemonset_list(Vec::new()));
        }
        Answer::Status(StatusCode::NOT_IMPLEMENTED)
    });
    let mut suite = suite(client, &["node-a"]);
    let error = format!("{:#}", suite.install().await.unwrap_err());
    assert!(
        error.contains("spegel already runs on this cluster (DaemonSet spegel/spegel)"),
        "{error}"
    );
    assert!(!suite.created_namespace);
    assert!(
        server.seen().iter().all(|r| r.method == "GET"),
        "nothing sent"
    );
}

#[tokio::test]
async fn a_stuck_rollout_names_the_crash_looping_pod_and_the_agents_last_words() {
    let refusal = "reflektor: containerd on this node cannot work with reflektor: containerd \
                   reports version \"1.4.13~ds1\", parsed as 1.4.13, which is older than the \
                   minimum 1.5.0.";
    let (client, _server) = FakeApiServer::start(move |request| {
        if request.path.ends_with("/daemonsets/reflektor") {
            return Answer::Json(daemonset(2, 1));
        }
        if request.path.ends_with("/pods") {
            let crashing = json!([{"name": "registry", "ready": false, "restartCount": 4,
                "image": "x", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff",
                    "message": "back-off 40s restarting failed container"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]);
            return Answer::Json(pod_list(vec![
                pod("reflektor-a", "node-a", true, json!([])),
                pod("reflektor-b", "node-b", false, crashing),
            ]));
        }
        if request.path.ends_with("/pods/reflektor-b/log") {
            assert!(request.query.contains("previous=true"), "{}", request.query);
            return Answer::Text(format!("starting\n{refusal}\n"));
        }
        Answer::Status(StatusCode::NOT_IMPLEMENTED)
    });
    let mut suite = suite(client, &["node-a", "node-b"]);
    let agent =
        objects::Workload::daemonset(&install_objects(&suite.manifests), "reflektor").unwrap();
    let error = suite
        .wait_rollout(&agent, KubeCheck::Installed)
        .await
        .unwrap_err();
    let error = format!("{error:#}");
    assert!(error.contains("1/2 pods Ready"), "{error}");
    assert!(error.contains("CrashLoopBackOff"), "{error}");
    assert!(error.contains("1.4.13~ds1"), "the agent's refusal: {error}");
    assert!(matches!(
        suite.rows[0].cells.get(&KubeCheck::Installed),
        Some(Cell::Pass { .. })
    ));
    let Some(Cell::Fail { detail }) = suite.rows[1].cells.get(&KubeCheck::Installed) else {
        panic!("node-b's cell: {:?}", suite.rows[1].cells);
    };
    assert!(
        detail.contains("CrashLoopBackOff") && detail.contains("older than"),
        "{detail}"
    );
}

#[tokio::test]
async fn peers_are_read_through_the_api_servers_pod_proxy() {
    let (client, server) = FakeApiServer::start(|request| {
        if request.path.ends_with("/pods") {
            return Answer::Json(pod_list(vec![
                pod("reflektor-a", "node-a", true, json!([])),
                pod("reflektor-b", "node-b", true, json!([])),
            ]));
        }
        if request.path.ends_with("/proxy/metrics") {
            return Answer::Text("# TYPE reflektor_peers gauge\nreflektor_peers 1\n".to_owned());
        }
        Answer::Status(StatusCode::NOT_IMPLEMENTED)
    });
    let mut suite = suite(client, &["node-a", "node-b"]);
    suite.check_peers().await.unwrap();
    let proxied: Vec<String> = server
        .seen()
        .into_iter()
        .filter(|r| r.path.contains("/proxy/"))
        .map(|r| r.path)
        .collect();
    assert_eq!(
        proxied,
        [
            "/api/v1/namespaces/reflektor-e2e-test/pods/reflektor-a:9090/proxy/metrics",
            "/api/v1/namespaces/reflektor-e2e-test/pods/reflektor-b:9090/proxy/metrics",
        ]
    );
    for row in &suite.rows {
        assert!(
            matches!(row.cells.get(&KubeCheck::Peers), Some(Cell::Pass { .. })),
            "{:?}",
            row.cells
        );
    }
}

#[tokio::test]
async fn an_agent_without_peers_fails_with_what_to_check() {
    let (client, _server) = FakeApiServer::start(|request| {
        if request.path.ends_with("/pods") {
            return Answer::Json(pod_list(vec![
                pod("reflektor-a", "node-a", true, json!([])),
                pod("reflektor-b", "node-b", true, json!([])),
            ]));
        }
        Answer::Text("reflektor_peers 0\n".to_owned())
    });
    let mut suite = suite(client, &["node-a", "node-b"]);
    let error = suite.check_peers().await.unwrap_err();
    assert!(format!("{error:#}").contains("node-a"), "{error:#}");
    let Some(Cell::Fail { detail }) = suite.rows[0].cells.get(&KubeCheck::Peers) else {
        panic!("{:?}", suite.rows[0].cells);
    };
    assert!(detail.contains("reflektor_peers is 0") && detail.contains("reflektor-bootstrap"));
}

/// The API server through an uninstall: the agent's pods gone, the
/// cleanup DaemonSet rolled out on node-a, the Job with `job_status`.
fn uninstall_routes(request: &Seen, job_status: &Value) -> Answer {
    let path = request.path.as_str();
    match request.method.as_str() {
        "GET" if path.ends_with("/daemonsets/reflektor") => Answer::Json(daemonset(1, 1)),
        "GET" if path.ends_with("/daemonsets/reflektor-cleanup") => Answer::Json(daemonset(1, 1)),
        "GET" if path.ends_with("/pods") && request.query.contains("component%3Dagent") => {
            Answer::Json(pod_list(Vec::new()))
        }
        "GET" if path.ends_with("/pods") => Answer::Json(pod_list(vec![pod(
            "reflektor-cleanup-a",
            "node-a",
            true,
            json!([]),
        )])),
        "GET" if path.ends_with("/jobs/reflektor-cleanup-wait") => {
            Answer::Json(json!({"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "reflektor-cleanup-wait"}, "status": job_status}))
        }
        "DELETE" if path == "/api/v1/namespaces/reflektor-e2e-test" => {
            Answer::Json(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "reflektor-e2e-test"}}))
        }
        "DELETE" => Answer::Json(daemonset(1, 1)),
        "PATCH" => Answer::Json(request.body.clone()),
        _ => Answer::Status(StatusCode::NOT_IMPLEMENTED),
    }
}

#[tokio::test]
async fn uninstall_goes_through_the_cleanup_path_then_deletes_the_namespace() {
    let job = json!({"succeeded": 1});
    let (client, server) = FakeApiServer::start(move |request| uninstall_routes(request, &job));
    let mut suite = suite(client, &["node-a"]);
    suite.created_namespace = true;
    suite.uninstall().await.unwrap();
    let steps: Vec<String> = server
        .seen()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let at = |step: &str| {
        steps
            .iter()
            .position(|s| s == step)
            .unwrap_or_else(|| panic!("no {step} in {steps:?}"))
    };
    assert!(
        at("DELETE /apis/apps/v1/namespaces/reflektor-e2e-test/daemonsets/reflektor")
            < at("PATCH /apis/apps/v1/namespaces/reflektor-e2e-test/daemonsets/reflektor-cleanup")
    );
    assert!(
        at("PATCH /apis/batch/v1/namespaces/reflektor-e2e-test/jobs/reflektor-cleanup-wait")
            < at("DELETE /api/v1/namespaces/reflektor-e2e-test")
    );
    assert!(
        steps
            .last()
            .unwrap()
            .starts_with("DELETE /api/v1/namespaces/"),
        "{steps:?}"
    );
    assert!(matches!(
        suite.rows[0].cells.get(&KubeCheck::Cleanup),
        Some(Cell::Pass { .. })
    ));
}

#[tokio::test]
async fn a_node_that_is_not_ready_is_named_with_its_kubelets_reason() {
    let (client, _server) = FakeApiServer::start(|request| {
        let path = request.path.as_str();
        if path == "/api/v1/nodes" {
            let node = |name: &str, ready: &str, message: &str| {
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                    "status": {"conditions": [{"type": "Ready", "status": ready,
                        "reason": "KubeletNotReady", "message": message}],
                    "nodeInfo": {"kubeletVersion": "v1.33.1",
                        "containerRuntimeVersion": "containerd://1.7.24",
                        "architecture": "amd64", "bootID": "", "kernelVersion": "",
                        "kubeProxyVersion": "", "machineID": "", "operatingSystem": "linux",
                        "osImage": "", "systemUUID": ""}}})
            };
            return Answer::Json(
                json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {},
                "items": [node("node-a", "True", "ok"),
                          node("node-b", "False", "container runtime is down")]}),
            );
        }
        if path.ends_with("/daemonsets/reflektor") {
            return Answer::Json(daemonset(2, 1));
        }
        if path.ends_with("/pods") {
            return Answer::Json(pod_list(vec![
                pod("reflektor-a", "node-a", true, json!([])),
                pod("reflektor-b", "node-b", false, json!([])),
            ]));
        }
        Answer::Status(StatusCode::NOT_IMPLEMENTED)
    });
    let mut suite = Suite::new(client, options(), "test".to_owned());
    suite.node_rows().await.unwrap();
    assert_eq!(suite.rows.len(), 2);
    assert_eq!(suite.rows[0].reported.as_deref(), Some("1.7.24"));
    assert!(matches!(
        suite.rows[0].cells.get(&KubeCheck::Verdict),
        Some(Cell::Pass { .. })
    ));
    let agent =
        objects::Workload::daemonset(&install_objects(&suite.manifests), "reflektor").unwrap();
    let error = format!(
        "{:#}",
        suite
            .wait_rollout(&agent, KubeCheck::Installed)
            .await
            .unwrap_err()
    );
    assert!(
        error.contains("node node-b is NotReady (KubeletNotReady: container runtime is down)"),
        "{error}"
    );
}

/// The test image goes to a real registry (the harness's docker-registry);
/// only the API server is a double.
#[tokio::test]
async fn a_second_node_pulls_the_test_image_through_its_peer() {
    let upstream = crate::upstream::Upstream::start().await.unwrap();
    let scrapes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = scrapes.clone();
    let (client, server) = FakeApiServer::start(move |request| {
        let path = request.path.as_str();
        match request.method.as_str() {
            "GET" if path.ends_with("/pods") => Answer::Json(pod_list(vec![
                pod("reflektor-a", "node-a", true, json!([])),
                pod("reflektor-b", "node-b", true, json!([])),
            ])),
            "GET" if path.ends_with("reflektor-b:9090/proxy/metrics") => {
                // Nothing from peers before the probes, the layer after.
                let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let bytes = if n == 0 { 0 } else { 5 << 20 };
                Answer::Text(format!(
                    "reflektor_served_bytes_total{{source=\"peer\"}} {bytes}\n\
                     reflektor_served_bytes_total{{source=\"local\"}} 7\n"
                ))
            }
            "POST" if path.ends_with("/pods") => Answer::Json(request.body.clone()),
            "GET" if path.contains("/pods/probe-") => {
                let name = path.rsplit('/').next().unwrap();
                Answer::Json(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name},
                    "status": {"containerStatuses": [{"name": "probe", "ready": false,
                        "restartCount": 0, "image": "x", "imageID": "",
                        "state": {"waiting": {"reason": "CreateContainerError",
                            "message": "no command specified"}}}]}}))
            }
            "DELETE" => Answer::Json(json!({"apiVersion": "v1", "kind": "Status",
                "metadata": {}, "status": "Success"})),
            _ => Answer::Status(StatusCode::NOT_IMPLEMENTED),
        }
    });
    let mut suite = suite(client, &["node-a", "node-b"]);
    suite.options.registry =
        Some(TestRegistry::parse(&format!("http://{}", upstream.addr())).unwrap());
    suite.options.deadline = Duration::from_secs(5);
    let shell = FakeShell::new("");
    suite.shell = Some(shell.clone());
    suite.check_pull_through_peer().await.unwrap();
    // 127.0.0.N is each node itself: blocking it there would prove nothing.
    assert_eq!(shell.scripts(), [], "a loopback registry is not blocked");

    let created: Vec<Value> = server
        .seen()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.body)
        .collect();
    assert_eq!(created.len(), 2, "one probe per node");
    assert_eq!(created[0]["spec"]["nodeName"], "node-a", "the seed first");
    assert_eq!(created[1]["spec"]["nodeName"], "node-b");
    let image = created[1]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert!(
        image.starts_with(&format!("{}/reflektor-e2e/probe:", upstream.addr())),
        "{image}"
    );
    // The image is really there, for both architectures.
    let tag = image.rsplit(':').next().unwrap();
    let (digest, media_type) = upstream.manifest("reflektor-e2e/probe", tag).await.unwrap();
    assert!(
        digest.starts_with("sha256:") && media_type.contains("index"),
        "{media_type}"
    );
    let Some(Cell::Pass { detail, .. }) = suite.rows[1].cells.get(&KubeCheck::PullThroughPeer)
    else {
        panic!("{:?}", suite.rows[1].cells);
    };
    assert!(
        detail.contains("from a peer") && !detail.contains("blocked"),
        "{detail}"
    );
    assert!(matches!(
        suite.rows[0].cells.get(&KubeCheck::PullThroughPeer),
        Some(Cell::NotRun { .. })
    ));
}

#[tokio::test]
async fn a_rollout_restart_replaces_every_pod_and_each_rewrites_hosts_toml() {
    let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = restarted.clone();
    let (client, server) = FakeApiServer::start(move |request| {
        let path = request.path.as_str();
        let after = flag.load(std::sync::atomic::Ordering::SeqCst);
        match request.method.as_str() {
            "PATCH" if path.ends_with("/daemonsets/reflektor") => {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                Answer::Json(daemonset(1, 1))
            }
            "GET" if path.ends_with("/daemonsets/reflektor") => Answer::Json(daemonset(1, 1)),
            "GET" if path.ends_with("/pods") => {
                let name = if after {
                    "reflektor-new"
                } else {
                    "reflektor-old"
                };
                Answer::Json(pod_list(vec![pod(name, "node-a", true, json!([]))]))
            }
            "GET" if path.ends_with("/pods/reflektor-new/log") => {
                assert!(request.query.contains("container=configuration"));
                Answer::Text(
                    "wrote /etc/containerd/certs.d/_default/hosts.toml: 1 reflektor host\n"
                        .to_owned(),
                )
            }
            _ => Answer::Status(StatusCode::NOT_IMPLEMENTED),
        }
    });
    let mut suite = suite(client, &["node-a"]);
    let shell = FakeShell::new(AGENT_HOSTS_TOML);
    suite.shell = Some(shell.clone());
    suite.check_rollout_restart().await.unwrap();
    assert!(
        shell.scripts().iter().any(|(node, script)| node == "node-a"
            && script.contains("cat '/etc/containerd/certs.d/_default/hosts.toml'")),
        "{:?}",
        shell.scripts()
    );
    let patch = server
        .seen()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert!(
        patch.body["spec"]["template"]["metadata"]["annotations"]
            ["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{}",
        patch.body
    );
    let Some(Cell::Pass { detail, .. }) = suite.rows[0].cells.get(&KubeCheck::Restart) else {
        panic!("{:?}", suite.rows[0].cells);
    };
    assert!(
        detail.contains("reflektor-new") && detail.contains("hosts.toml"),
        "{detail}"
    );
    assert!(detail.contains("naming the agent every time"), "{detail}");
}

#[test]
fn a_hosts_toml_that_does_not_name_the_agent_is_said_why() {
    use super::agents::names_the_agent;
    names_the_agent(AGENT_HOSTS_TOML, 5000).unwrap();
    let other = names_the_agent("[host.\"https://registry-1.docker.io\"]\n", 5000);
    assert!(
        other
            .unwrap_err()
            .contains("no host entry for the agent's port 5000")
    );
    assert!(
        names_the_agent("server = ", 5000)
            .unwrap_err()
            .contains("not TOML")
    );
    assert!(names_the_agent("", 5000).unwrap_err().contains("no [host"));
}

#[tokio::test]
async fn a_proxy_that_cannot_reach_the_agent_is_not_blamed_on_dns() {
    let (client, _server) = FakeApiServer::start(|request| {
        if request.path.ends_with("/pods") {
            return Answer::Json(pod_list(vec![
                pod("reflektor-a", "node-a", true, json!([])),
                pod("reflektor-b", "node-b", true, json!([])),
            ]));
        }
        Answer::Status(StatusCode::SERVICE_UNAVAILABLE)
    });
    let mut suite = suite(client, &["node-a", "node-b"]);
    suite.check_peers().await.unwrap_err();
    let Some(Cell::Fail { detail }) = suite.rows[0].cells.get(&KubeCheck::Peers) else {
        panic!("{:?}", suite.rows[0].cells);
    };
    assert!(
        detail.contains("could not read the agent's metrics through the API server")
            && detail.contains("port 9090")
            && !detail.contains("reflektor-bootstrap"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_pod_the_scheduler_has_not_placed_is_found_by_its_node_and_says_why() {
    let (client, _server) = FakeApiServer::start(|request| {
        if request.path.ends_with("/daemonsets/reflektor") {
            return Answer::Json(daemonset(1, 0));
        }
        if request.path.ends_with("/pods") {
            // As the DaemonSet controller makes it: pinned by affinity, not yet bound.
            return Answer::Json(pod_list(vec![json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "reflektor-a", "namespace": "reflektor-e2e-test"},
                "spec": {"containers": [{"name": "registry"}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                        {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name",
                            "operator": "In", "values": ["node-a"]}]}]}}}},
                "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
                    "status": "False", "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."}]}})]));
        }
        Answer::Status(StatusCode::NOT_IMPLEMENTED)
    });
    let mut suite = suite(client, &["node-a"]);
    let agent = suite.agent.clone();
    suite
        .wait_rollout(&agent, KubeCheck::Installed)
        .await
        .unwrap_err();
    let Some(Cell::Fail { detail }) = suite.rows[0].cells.get(&KubeCheck::Installed) else {
        panic!("{:?}", suite.rows[0].cells);
    };
    assert!(
        detail.contains("not scheduled: Unschedulable") && detail.contains("free ports"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_cleanup_job_that_fails_fails_every_node_and_keeps_the_namespace() {
    let job = json!({"failed": 4, "conditions": [{"type": "Failed", "status": "True",
        "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]});
    let (client, server) = FakeApiServer::start(move |request| uninstall_routes(request, &job));
    let mut suite = suite(client, &["node-a"]);
    suite.created_namespace = true;
    let error = format!("{:#}", suite.uninstall().await.unwrap_err());
    assert!(
        error.contains("BackoffLimitExceeded") && error.contains("is kept"),
        "{error}"
    );
    let Some(Cell::Fail { detail }) = suite.rows[0].cells.get(&KubeCheck::Cleanup) else {
        panic!("{:?}", suite.rows[0].cells);
    };
    assert!(detail.contains("cleanup pod was Ready, but"), "{detail}");
    assert!(
        !server
            .seen()
            .iter()
            .any(|r| r.method == "DELETE" && r.path == "/api/v1/namespaces/reflektor-e2e-test"),
        "the namespace, with the cleanup in it, is kept"
    );
}
