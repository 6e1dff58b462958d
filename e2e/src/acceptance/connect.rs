//! Reaching a cluster: a kubeconfig, read as kubectl reads it, and one
//! `GET /version` under a short deadline, so that "no cluster here" is a
//! prompt, plain answer rather than a hang or a failed check.

use std::path::Path;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// How long the API server gets to answer `/version`.
const PROBE: Duration = Duration::from_secs(10);

/// A cluster that answered.
pub struct Connected {
    pub client: Client,
    pub url: String,
    /// Its Kubernetes version, e.g. `v1.33.1`.
    pub version: String,
}

/// Why no cluster could be used: the cluster's URL (or the config that
/// named none) and the reason.
#[derive(Debug)]
pub struct Unreachable {
    pub cluster: String,
    pub reason: String,
    /// Nothing answered (or nothing is configured at all), as opposed to a
    /// kubeconfig, context or credentials the user must fix: only the
    /// first makes a run "unavailable" rather than an error.
    pub nothing_there: bool,
}

/// The cluster `kubeconfig` names (or `KUBECONFIG`, `~/.kube/config`, the
/// in-cluster config), in `context` if given, once its API server answers.
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<Connected, Unreachable> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let source = kubeconfig.map_or_else(
        || "KUBECONFIG, ~/.kube/config or the in-cluster config".to_owned(),
        |path| path.display().to_string(),
    );
    let unreachable = |cluster: &str, reason: String| Unreachable {
        cluster: cluster.to_owned(),
        reason,
        nothing_there: true,
    };
    let misconfigured = |cluster: &str, reason: String| Unreachable {
        cluster: cluster.to_owned(),
        reason,
        nothing_there: false,
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                misconfigured(
                    &source,
                    format!("cannot read the kubeconfig --kubeconfig names: {e}"),
                )
            })?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| misconfigured(&source, format!("no usable cluster in it: {e}")))
        }
        None if context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| misconfigured(&source, format!("no usable cluster in it: {e}"))),
        // Nothing configured at all: no cluster here.
        None => Config::infer()
            .await
            .map_err(|e| unreachable(&source, format!("no cluster configured: {e}"))),
    };
    let mut config = config?;
    let url = config.cluster_url.to_string();
    // Fail fast where nothing listens; the suite's own steps have deadlines.
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(60));
    // Else a pooled connection's idle time counts against the next answer.
    config.reset_reader_on_write = true;
    let client = Client::try_from(config)
        .map_err(|e| misconfigured(&url, format!("cannot build a client: {e}")))?;
    let version = match tokio::time::timeout(PROBE, client.apiserver_version()).await {
        Err(_) => {
            return Err(unreachable(
                &url,
                format!("the API server did not answer /version within {PROBE:?}"),
            ));
        }
        // It answered: the credentials are what to fix.
        Ok(Err(kube::Error::Api(status))) => {
            return Err(misconfigured(
                &url,
                format!(
                    "the API server answered /version with {} {}: {}; check the \
                     kubeconfig's credentials",
                    status.code, status.reason, status.message
                ),
            ));
        }
        Ok(Err(error)) => {
            let reason = reflektor::errors::chain(&error);
            return Err(unreachable(&url, format!("no answer: {reason}")));
        }
        Ok(Ok(info)) => info.git_version,
    };
    Ok(Connected {
        client,
        url,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubeconfig whose server is a closed port: a real attempt, no
    /// double, and the answer is "unreachable", never a pass.
    #[tokio::test]
    async fn a_cluster_that_does_not_answer_is_unreachable_with_its_url() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n\
                 clusters:\n- name: nowhere\n  cluster:\n    server: https://127.0.0.1:{port}\n\
                 contexts:\n- name: nowhere\n  context:\n    cluster: nowhere\n    user: nobody\n\
                 users:\n- name: nobody\n  user:\n    token: none\n"
            ),
        )
        .unwrap();
        let Err(unreachable) = connect(Some(&path), None).await else {
            panic!("a closed port answered");
        };
        assert!(
            unreachable.cluster.contains(&format!("127.0.0.1:{port}")),
            "{unreachable:?}"
        );
        assert!(unreachable.reason.contains("no answer"), "{unreachable:?}");
        assert!(unreachable.nothing_there);
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_is_named() {
        let Err(unreachable) = connect(Some(Path::new("/nonexistent/kubeconfig")), None).await
        else {
            panic!("a missing file connected");
        };
        assert_eq!(unreachable.cluster, "/nonexistent/kubeconfig");
        assert!(
            unreachable.reason.contains("cannot read"),
            "{unreachable:?}"
        );
    }
}
