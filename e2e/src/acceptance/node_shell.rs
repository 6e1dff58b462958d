//! Reaching into a node, where the cluster allows it: kind's nodes are
//! containers (`docker exec {node}`), others may take `ssh {node}`. With
//! it, the suite reads hosts.toml on the node's own filesystem and can
//! block the registry for a node; without it, it reads only what the API
//! server shows.

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;

/// Runs a shell script on a node.
#[async_trait]
pub trait NodeShell: Send + Sync {
    /// The script's standard output; an error, with its standard error,
    /// when it exits non-zero.
    async fn run(&self, node: &str, script: &str) -> Result<String>;
}

/// `--node-shell`: a command line with `{node}` in it, to which `sh -s` is
/// appended, the script going in on its standard input: `docker exec -i
/// {node}`, `ssh root@{node}`. Not `sh -c <script>`: ssh joins its
/// arguments into one line for the remote shell, which would split the
/// script apart.
#[derive(Debug, Clone)]
pub struct CommandShell {
    template: Vec<String>,
}

impl CommandShell {
    pub fn parse(template: &str) -> Result<Self> {
        let template: Vec<String> = template.split_whitespace().map(str::to_owned).collect();
        ensure!(
            template.iter().any(|word| word.contains("{node}")),
            "--node-shell {:?} does not name the node; expected a command with {{node}} in \
             it, e.g. \"docker exec -i {{node}}\" for kind or \"ssh root@{{node}}\"",
            template.join(" ")
        );
        Ok(CommandShell { template })
    }

    /// The command line for `node`; the script goes to its standard input.
    pub fn argv(&self, node: &str) -> Vec<String> {
        self.template
            .iter()
            .map(|word| word.replace("{node}", node))
            .chain(["sh".to_owned(), "-s".to_owned()])
            .collect()
    }
}

#[async_trait]
impl NodeShell for CommandShell {
    async fn run(&self, node: &str, script: &str) -> Result<String> {
        use tokio::io::AsyncWriteExt;
        let argv = self.argv(node);
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {:?} for node {node}", argv[0]))?;
        let mut stdin = child.stdin.take().context("the shell's standard input")?;
        stdin.write_all(script.as_bytes()).await?;
        drop(stdin);
        let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("on {node}, `{script}` did not end within {TIMEOUT:?}"))??;
        if !output.status.success() {
            bail!(
                "on {node}, `{script}` exited {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8(output.stdout).context("the node's shell printed non-UTF-8 output")
    }
}

/// How long one command on a node may take: they are `cat` and `iptables`.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_template_names_the_node_and_runs_the_script() {
        let shell = CommandShell::parse("env NODE={node}").unwrap();
        assert_eq!(
            shell.argv("kind-worker"),
            ["env", "NODE=kind-worker", "sh", "-s"]
        );
        // A script with quotes and spaces arrives whole.
        let out = shell
            .run("kind-worker", "echo \"$NODE\" 'a  b'")
            .await
            .unwrap();
        assert_eq!(out.trim(), "kind-worker a  b");
        let error = shell.run("kind-worker", "echo no >&2; exit 3").await;
        assert!(format!("{:#}", error.unwrap_err()).contains("no"));
        assert!(CommandShell::parse("docker exec").is_err());
    }
}
